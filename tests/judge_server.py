"""A scripted OpenAI-compatible judge: real HTTP on a port the OS picks (port 0, read back), deterministic
answers decided by what the request says.

The text of the last user message decides: `ANS<...>` anywhere in it -> that literal answer; for pairwise
prompts the reply holding `WIN` wins in whichever position it stands, and `BIAS` makes the judge always
say "A". A test may pass its own `answer(body)` instead (a scripted client or counsellor). A prompt holding
`RATE429` gets a 429 the first time it is seen, `SLOW` a reply that never comes within the client's timeout
the first time; both succeed afterwards. `HTTP500` always gets a 500, `ALWAYS429` always a 429 with
`Retry-After: 1`. With `health` set GET /healthz answers it. With `models` set the server lists them at GET /v1/models and answers any other model 404;
with `limit` set it admits that many requests at a time (each answered after `delay` seconds) and answers
the rest 429 at once with a 10 ms Retry-After, as a busy server does. Every request is recorded."""
import hashlib
import json
import re
import sqlite3
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def prompt_key(messages) -> str:
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


def decide(text: str) -> str:
    found = re.findall(r"ANS<(.*?)>", text, re.S)
    if "【回复 A】" in text:
        if "BIAS" in text:
            return "A"
        a, b = text.split("【回复 A】")[1].split("【回复 B】")
        return "A" if "WIN" in a and "WIN" not in b else "B" if "WIN" in b and "WIN" not in a else "平"
    return found[-1] if found else "[0, 0, 0, 0]"


class JudgeServer:
    def __init__(self, answer=None):
        self.answer = answer or (lambda body: decide(body["messages"][-1]["content"]))  # body -> the reply text
        self.lock = threading.Condition()
        self.requests = []  # (prompt key, HTTP status) of every request received
        self.answered = Counter()  # prompt key -> 200 answers granted (then sent)
        self.hold_after = None  # when set: requests beyond this many answers wait for `release`, then get nothing
        self.release = threading.Event()
        self.never = threading.Event()
        self.held = 0
        self.models = None  # model names listed at GET /v1/models (others 404); None: no such route
        self.health = None  # the JSON of GET /healthz (this project's server reports its limits there); None: 404
        self.limit, self.delay, self.in_flight, self.peak = None, 0.0, 0, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.handle(self, body)

            def do_GET(self):
                if self.path == "/healthz" and server.health is not None:
                    return server.send(self, 200, server.health)
                if server.models is None or self.path.rstrip("/") != "/v1/models":
                    return server.send(self, 404, {"error": {"message": "not found"}})
                server.send(self, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, h, body):
        messages = body["messages"]
        key, text = prompt_key(messages), messages[-1]["content"]
        if self.models is not None and body["model"] not in self.models:
            return self.send(h, 404, {"error": {"message": f"model {body['model']} not found", "code": "model_not_found"}})
        if "HTTP500" in text:
            self.requests.append((key, 500))
            return self.send(h, 500, {"error": {"message": "boom", "type": "server_error"}})
        if "ALWAYS429" in text:
            self.requests.append((key, 429))
            return self.send(h, 429, {"error": {"message": "busy", "type": "rate_limit"}}, {"retry-after": "1"})
        if self.limit is not None:
            return self.limited(h, body, key)
        with self.lock:
            seen = sum(1 for k, _ in self.requests if k == key)
            status = 429 if "RATE429" in text and seen == 0 else 200
            slow = "SLOW" in text and seen == 0
            hold = self.hold_after is not None and sum(self.answered.values()) >= self.hold_after
            self.requests.append((key, status))
            if hold:
                self.held += 1
                self.lock.notify_all()
            elif status == 200 and not slow:  # counted when granted, so concurrent requests cannot pass hold_after
                self.answered[key] += 1
                self.lock.notify_all()
        if hold:
            self.release.wait(60)
            return  # the connection closes with no answer: the client was killed meanwhile
        if slow:
            self.never.wait(3)  # longer than the tests' client timeout; no answer is sent
            return
        if status == 429:
            return self.send(h, 429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"retry-after-ms": "10"})
        self.reply(h, body)

    def limited(self, h, body, key):
        with self.lock:
            admitted = self.in_flight < self.limit
            self.in_flight += admitted
            self.peak = max(self.peak, self.in_flight)
            self.requests.append((key, 200 if admitted else 429))
        if not admitted:
            return self.send(h, 429, {"error": {"message": "busy", "type": "rate_limit"}}, {"retry-after-ms": "10"})
        try:
            time.sleep(self.delay)
            self.reply(h, body)
        finally:
            with self.lock:
                self.in_flight -= 1

    def reply(self, h, body):
        answer, text = self.answer(body), body["messages"][-1]["content"]
        self.send(h, 200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": answer}}],
                           "usage": {"prompt_tokens": len(text), "completion_tokens": len(answer),
                                     "total_tokens": len(text) + len(answer)}})

    @staticmethod
    def send(h, status, obj, headers=None):
        data = json.dumps(obj, ensure_ascii=False).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def wait_for(self, predicate, timeout=60):
        with self.lock:
            assert self.lock.wait_for(predicate, timeout), "the scripted judge did not get there in time"

    def stop(self):
        self.release.set()
        self.never.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def judge_flags(url: str, *extra) -> list[str]:
    """The judge flags the tests point at a scripted judge: short timeouts, no progress bar."""
    return ["--judge_url", url, "--judge_model", "scripted-judge", "--judge_timeout", "0.5", "--judge_concurrency", "4",
            "--no_progress", *extra]


def cache_rows(path) -> int:
    """Answers stored in a judge cache file; -1 while it cannot be read (not yet written, or mid-write)."""
    try:
        with sqlite3.connect(str(path)) as db:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.Error:
        return -1
