"""The HTTP server for real: started as a process (`serve`) on a free localhost port, ready when GET /v1/models
answers (one test lets it pick with --port 0 and reads the port back from its start line), driven with the official `openai` client, LangChain's `ChatOpenAI` and raw HTTP
where a client cannot say it; the app also runs in-process on a free port where a test must hold the model
(a lock the test owns) or see inside it. The chat page is measured in headless Chromium (test_page.py)."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import urllib.error
import urllib.request

import openai
import pytest

from conftest import DIALOGUES, ROOT
from psydt_lora.inference.openai_api import HELP_CLOSE, HELP_OPEN, UNANSWERED

SCRIPT = ROOT / "LLM_fine_turning" / "inference_psydt_lora.py"
D0 = DIALOGUES[0]["messages"]
CRISIS = "我不想活了"
ANNOUNCED = re.compile(r"对话页面 http://127\.0\.0\.1:(\d+)/")


def http(method, url, body=None, headers=None, timeout=30):
    """(status, headers, parsed JSON or None): a raw request, for what the openai client does not show."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            status, head, raw = res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as err:
        status, head, raw = err.code, dict(err.headers), err.read()
    try:
        return status, {k.lower(): v for k, v in head.items()}, json.loads(raw)
    except ValueError:
        return status, {k.lower(): v for k, v in head.items()}, None


def wait_for(ready, timeout: float, what: str):
    """Poll `ready()` until it is true (a readiness wait, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def free_port() -> int:
    """A localhost port nothing listens on now (the server binds it a moment later)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """The CLI's server (`serve`) as a process on a free port; ready when GET /v1/models answers (any status:
    with an API key it is a 401), never by its console wording. `port=0` lets the server pick and reads the
    port it announces (the one test of that announcement)."""

    def __init__(self, *args, env=None, port=None):
        port = free_port() if port is None else port
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "serve", "--port", str(port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONPATH": "", **(env or {})})
        self.lines, self.port, self.announced = [], port or None, threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not port and (not self.announced.wait(180) or self.port is None):
            self.proc.kill()
            raise AssertionError("server did not start:\n" + "".join(self.lines)[-3000:])
        self.url = f"http://127.0.0.1:{self.port}"

        def answers():
            assert self.proc.poll() is None, "server exited:\n" + "".join(self.lines)[-3000:]
            try:
                return http("GET", f"{self.url}/v1/models", timeout=5)[0] in (200, 401)
            except OSError:
                return False

        wait_for(answers, 180, "GET /v1/models")

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            found = ANNOUNCED.search(line)
            if found and self.port is None:
                self.port = int(found.group(1))
                self.announced.set()
        self.announced.set()  # the process ended (the constructor reports it)

    def client(self, key="unused", **kw):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **kw)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.reader.join(30)
        return "".join(self.lines)


@contextlib.contextmanager
def in_process(app):
    """The app served by uvicorn in a thread, on a socket bound to port 0; yields (url, uvicorn server)."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=30)
    sock = config.bind_socket()
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 60, "uvicorn to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture(scope="module")
def server(tiny_model_dir, memorised_adapter):
    s = Server("--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
               "--max_new_tokens", "60")
    yield s
    s.stop()


def history(item):
    return [m for m in item["messages"][:-1]]


def test_replies_streamed_equal_the_terminal_test_mode(server, tiny_model_dir, memorised_adapter, data_files, tmp_path,
                                                       tiny_tokenizer):
    import inference_psydt_lora

    _, test = data_files
    out = tmp_path / "r.json"
    assert inference_psydt_lora.main(["--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter),
                                      "--mode", "test", "--test_file", str(test), "--test_output_file", str(out),
                                      "--no-do_sample", "--max_new_tokens", "60"]) == 0
    expected = {r["index"]: r["response"] for r in json.loads(out.read_text("utf-8"))["results"]}
    items = json.loads(test.read_text("utf-8"))
    client = server.client()
    assert [m.id for m in client.models.list()] == ["psydt"]
    for index, item in enumerate(items):
        reply = client.chat.completions.create(model="psydt", messages=history(item), temperature=0, max_tokens=60)
        assert reply.choices[0].message.content == expected[index] == item["messages"][-1]["content"]
        assert reply.choices[0].finish_reason == "stop"
        # exactly the tokens generated: the reply's and the end-of-turn token that closed it
        assert reply.usage.completion_tokens == len(tiny_tokenizer(expected[index], add_special_tokens=False)["input_ids"]) + 1
        assert reply.safety == {"enabled": True, "crisis": False, "categories": [], "level": None, "screened": False,
                                "layers": {"lexicon": {"crisis": False, "categories": [], "level": None}}}
        chunks = list(client.chat.completions.create(model="psydt", messages=history(item), temperature=0,
                                                     max_tokens=60, stream=True, stream_options={"include_usage": True}))
        assert chunks[0].safety["crisis"] is False  # the safety event comes first
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected[index]
        assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens


def test_a_crisis_message_gets_resources_before_the_reply(server):
    client = server.client()
    chunks = list(client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": CRISIS}],
                                                 stream=True, max_tokens=20))
    first = chunks[0]
    assert first.safety["crisis"] and first.safety["categories"] == ["suicide"]
    assert any(r["contact"] == "12356" for r in first.safety["resources"]) and "12356" in first.safety["notice"]
    # the first content is the help, fenced, and nothing of the reply comes before it
    assert first.choices[0].delta.content == HELP_OPEN + first.safety["notice"] + HELP_CLOSE
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    reply = client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": CRISIS}], max_tokens=20)
    assert reply.safety["crisis"] and reply.safety["resources"] and reply.safety["level"] in ("concern", "imminent")
    assert reply.choices[0].message.content.startswith(HELP_OPEN + reply.safety["notice"] + HELP_CLOSE)


def test_langchain_and_the_openai_client_see_the_help_line_in_the_content(server):
    """LangChain's ChatOpenAI keeps nothing outside OpenAI's schema: the help must be in the content itself."""
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{server.url}/v1", api_key="unused", model="psydt", max_retries=0, max_tokens=20,
                     temperature=0)
    invoked = llm.invoke([HumanMessage(CRISIS)]).content
    assert invoked.startswith(HELP_OPEN) and "12356" in invoked.split(HELP_CLOSE)[0]
    pieces = [c.content for c in llm.stream([HumanMessage(CRISIS)]) if c.content]
    assert pieces[0].startswith(HELP_OPEN) and "12356" in pieces[0] and pieces[0].endswith(HELP_CLOSE)
    calm = llm.invoke([HumanMessage(D0[1]["content"])]).content
    assert HELP_OPEN not in calm and "12356" not in calm  # only crisis turns carry it
    # the help sent back as history is not shown to the model as its own words: same reply as without it
    again = llm.invoke([HumanMessage(CRISIS), AIMessage(invoked), HumanMessage(D0[1]["content"])]).content
    plain = llm.invoke([HumanMessage(CRISIS), AIMessage(invoked.split(HELP_CLOSE, 1)[1]),
                        HumanMessage(D0[1]["content"])]).content
    assert again == plain
    reply = server.client().chat.completions.create(model="psydt", messages=[{"role": "user", "content": CRISIS}],
                                                    max_tokens=20)
    assert reply.choices[0].message.content.startswith(HELP_OPEN) and "12356" in reply.choices[0].message.content


def test_eight_concurrent_streams_all_complete(server):
    client = server.client()

    def one(i):
        msgs = [{"role": "user", "content": D0[1]["content"]}]
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="psydt", messages=msgs, stream=True, temperature=0, max_tokens=60) if c.choices)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(8)))
    assert replies == [D0[2]["content"]] * 8


def test_bad_requests_get_json_errors(server):
    import http.client as raw_http

    conn = raw_http.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")  # a 3 MB body announced: refused before it is read
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(3 << 20))
    conn.endheaders()
    res = conn.getresponse()
    assert res.status == 413 and json.loads(res.read())["error"]["type"] == "request_too_large"
    conn.close()
    status, _, body = http("POST", f"{server.url}/v1/chat/completions", {"messages": [{"role": "assistant", "content": "x"}]})
    assert status == 400 and "user" in body["error"]["message"]
    assert http("POST", f"{server.url}/v1/chat/completions", b"{not json")[0] == 400
    # CORS is closed unless asked for
    _, head, _ = http("OPTIONS", f"{server.url}/v1/chat/completions",
                      headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in head


def test_keys_and_no_request_text_in_the_log(tiny_model_dir):
    s = Server("--model_path", str(tiny_model_dir), "--no_adapter", "--max_new_tokens", "8", "--no-do_sample",
               env={"PSYDT_API_KEY": "s3cret"}, port=0)  # --port 0: the server picks a free port and says which
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        status, _, body = http("GET", f"{s.url}/v1/models")  # no key at all
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert http("GET", f"{s.url}/")[0] == 200  # the page itself holds no secret; its requests need the key
        client = s.client("s3cret")
        assert [m.id for m in client.models.list()] == ["psydt"]
        reply = client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": "你好"}])
        assert reply.choices[0].finish_reason in ("stop", "length")
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once it has shut down gracefully
    finally:
        log = s.stop()
    assert "你好" not in log  # no request text in the logs


@pytest.mark.slow
def test_the_openai_backend_is_a_safety_gateway_in_front_of_another_engine(tiny_model_dir, memorised_adapter, server):
    engine = Server("--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
                    "--max_new_tokens", "60", "--safety", "off")
    gateway = Server("--backend", "openai", "--backend_url", f"{engine.url}/v1", "--model_path", str(tiny_model_dir),
                     "--adapter_path", str(memorised_adapter), "--no-do_sample", "--max_new_tokens", "60")
    try:
        msgs = [{"role": "user", "content": D0[1]["content"]}]
        direct = server.client().chat.completions.create(model="psydt", messages=msgs, temperature=0, max_tokens=60)
        via = gateway.client().chat.completions.create(model="psydt", messages=msgs, temperature=0, max_tokens=60)
        assert via.choices[0].message.content == direct.choices[0].message.content == D0[2]["content"]
        assert via.usage.completion_tokens == direct.usage.completion_tokens
        unsafe_engine = engine.client().chat.completions.create(model="psydt", messages=[{"role": "user", "content": CRISIS}],
                                                               max_tokens=10)
        assert unsafe_engine.safety == {"enabled": False}  # the engine itself screens nothing...
        chunks = list(gateway.client().chat.completions.create(
            model="psydt", messages=[{"role": "user", "content": CRISIS}], stream=True, max_tokens=10))
        assert chunks[0].safety["crisis"] and chunks[0].safety["resources"]  # ...the gateway does
        assert "正在生成" not in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finally:
        gateway.stop()
        engine.stop()


@pytest.mark.slow
def test_the_base_model_as_guard_shares_the_model_safely_across_streams(tiny_model_dir, memorised_adapter):
    """--safety_model base switches the adapter off to judge: never while another request is generating."""
    s = Server("--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
               "--max_new_tokens", "60", "--safety_model", "base")
    try:
        client = s.client()

        def one(i):
            chunks = list(client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": D0[1]["content"]}],
                                                         stream=True, temperature=0, max_tokens=60))
            return chunks[0].safety["layers"], "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(4)))
        assert all("base" in layers for layers, _ in results)
        assert [reply for _, reply in results] == [D0[2]["content"]] * 4  # the adapter was on for every reply
    finally:
        s.stop()


def test_max_tokens_clamped_validated_and_counted_exactly(server, tiny_tokenizer):
    client = server.client()
    msgs = [{"role": "user", "content": D0[1]["content"]}]
    big = client.chat.completions.create(model="psydt", messages=msgs, temperature=0, max_tokens=100000)
    assert big.max_tokens == 60 and big.choices[0].message.content == D0[2]["content"]  # clamped to --max_new_tokens
    from langchain_openai import ChatOpenAI

    assert ChatOpenAI(base_url=f"{server.url}/v1", api_key="x", model="psydt", max_retries=0, max_tokens=1024,
                      temperature=0).invoke(D0[1]["content"]).content == D0[2]["content"]
    for bad in (0, -1, 2.5):
        status, _, body = http("POST", f"{server.url}/v1/chat/completions",
                               {"model": "psydt", "messages": msgs, "max_tokens": bad})
        assert status == 400 and body["error"]["param"] == "max_tokens", bad
    short = client.chat.completions.create(model="psydt", messages=msgs, temperature=0, max_tokens=5)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5
    assert short.choices[0].message.content == D0[2]["content"][:5]  # one character a token in the tiny tokenizer
    chunks = list(client.chat.completions.create(model="psydt", messages=msgs, temperature=0, max_tokens=5, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].max_tokens == 5 and chunks[-1].usage.completion_tokens == 5


def test_content_parts_and_stop_strings(server):
    client = server.client()
    text = D0[1]["content"]
    parts = [{"type": "text", "text": text[:4]}, {"type": "text", "text": text[4:]}]
    reply = client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": parts}], temperature=0)
    assert reply.choices[0].message.content == D0[2]["content"]
    status, _, body = http("POST", f"{server.url}/v1/chat/completions", {"model": "psydt", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]})
    assert status == 400 and "image_url" in body["error"]["message"] and body["error"]["param"] == "messages[0].content[0]"
    msgs = [{"role": "user", "content": text}]
    full = D0[2]["content"]
    cut = full.index("压力")
    stopped = client.chat.completions.create(model="psydt", messages=msgs, temperature=0, stop=["压力", "不会出现"])
    assert stopped.choices[0].message.content == full[:cut] and stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < len(full)  # generation ended there, not at the reply's end
    streamed = list(client.chat.completions.create(model="psydt", messages=msgs, temperature=0, stop="压力", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[:cut]
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_errors_come_in_openai_shape(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "你好"}])
    assert err.value.body["code"] == "model_not_found" and "psydt" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert client.models.retrieve("psydt").id == "psydt"
    with pytest.raises(openai.BadRequestError, match="n 只支持 1"):
        client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": "你好"}], n=2)
    for method, path, status in (("GET", "/nowhere", 404), ("GET", "/v1/chat/completions", 405), ("DELETE", "/v1/models", 405)):
        got, _, body = http(method, server.url + path)
        assert got == status and set(body) == {"error"} and body["error"]["message"] and body["error"]["type"], path
    assert http("GET", f"{server.url}/favicon.ico")[0] == 200
    hello = [{"role": "user", "content": "你好"}]
    for bad, param in (({"messages": [{"role": ["user"], "content": "你好"}]}, "messages[0]"),
                       ({"messages": hello, "stream": True, "stream_options": "usage"}, "stream_options")):
        got, _, body = http("POST", f"{server.url}/v1/chat/completions", {"model": "psydt", **bad})
        assert got == 400 and body["error"]["param"] == param, body  # the client's mistake, not a 500


# -- in-process: a test that must hold the model or look inside the server ----------------------------------
@pytest.fixture(scope="module")
def loaded(tiny_model_dir, memorised_adapter):
    from psydt_lora.models import load_for_inference

    return load_for_inference(tiny_model_dir, memorised_adapter, device="cpu")


def app_for(loaded, lock=None, limit=4096, **config):
    from psydt_lora.inference.generation import GenerationSettings
    from psydt_lora.inference.serving import HFBackend, ServeConfig, create_app
    from psydt_lora.safety.session import Safety

    model, tok, _, _ = loaded
    backend = HFBackend(model, tok, limit, lock=lock)
    settings = GenerationSettings(max_new_tokens=60, do_sample=False)
    return create_app(backend, Safety(), ServeConfig("psydt", None, 6, settings, 60, **config)), backend


@pytest.mark.parametrize("stream", [False, True])
def test_six_simultaneous_requests_admit_exactly_one(loaded, stream):
    """--max_concurrency 1 with no queue (--max_queue 0, app_for's default): while the admitted request runs (it
    waits for the model, whose lock this test holds), the other five are answered 429 at once."""
    lock = threading.Lock()
    app, _ = app_for(loaded, lock=lock, max_concurrency=1)
    msgs = [{"role": "user", "content": D0[1]["content"]}]
    with in_process(app) as (url, _):
        statuses, start = [], threading.Barrier(6)

        def one(i):
            start.wait()
            status, _, _ = http("POST", f"{url}/v1/chat/completions",
                                {"model": "psydt", "messages": msgs, "stream": stream, "max_tokens": 10}, timeout=120)
            statuses.append(status)
            return status

        with ThreadPoolExecutor(6) as pool:
            lock.acquire()
            try:
                futures = [pool.submit(one, i) for i in range(6)]
                with contextlib.suppress(AssertionError):  # on failure: the count below says how many got in
                    wait_for(lambda: len(statuses) >= 5, 30, "five refusals")
                refused = list(statuses)
            finally:
                lock.release()  # the admitted request may generate now
            results = sorted(f.result(120) for f in futures)
    assert refused == [429] * 5, f"{6 - refused.count(429)} of 6 admitted with --max_concurrency 1"
    assert results == [200] + [429] * 5


def test_an_overlong_message_is_refused_before_generation(loaded):
    app, backend = app_for(loaded, limit=200)
    calls = []
    real = backend.stream
    backend.stream = lambda *a, **k: calls.append(1) or real(*a, **k)
    with in_process(app) as (url, _):
        status, _, body = http("POST", f"{url}/v1/chat/completions",
                               {"model": "psydt", "messages": [{"role": "user", "content": "好" * 500}]})
        assert status == 400 and body["error"]["code"] == "context_length_exceeded" and calls == []
        assert "200" in body["error"]["message"] and "60" in body["error"]["message"]  # context and max_tokens
        history = [{"role": "user", "content": "好" * 150}, {"role": "assistant", "content": "嗯"},
                   {"role": "user", "content": D0[1]["content"]}]
        status, _, body = http("POST", f"{url}/v1/chat/completions", {"model": "psydt", "messages": history})
        assert status == 200 and calls == [1]  # a long history is trimmed, not refused


def test_help_in_content_can_be_left_to_the_client(loaded):
    app, _ = app_for(loaded, help_in_content=False)
    with in_process(app) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": CRISIS}], max_tokens=10)
        assert reply.safety["crisis"] and "12356" in reply.safety["notice"]
        assert HELP_OPEN not in reply.choices[0].message.content


def test_a_stream_in_flight_finishes_when_the_server_shuts_down(loaded):
    lock = threading.Lock()
    app, _ = app_for(loaded, lock=lock)
    with in_process(app) as (url, server):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with lock:
            stream = client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": D0[1]["content"]}],
                                                    stream=True, temperature=0)
            first = next(iter(stream))  # admitted, waiting for the model
            server.should_exit = True  # what uvicorn's SIGTERM handler does
        rest = list(stream)
    assert first.safety["crisis"] is False
    assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices) == D0[2]["content"]
    assert rest[-1].choices[0].finish_reason == "stop"


def test_an_unexpected_failure_is_a_500_in_openai_shape(loaded):
    app, backend = app_for(loaded)
    backend.tokenizer = object()  # rendering the turn now fails inside the server, outside any backend
    with in_process(app) as (url, _):
        status, _, body = http("POST", f"{url}/v1/chat/completions",
                               {"model": "psydt", "messages": [{"role": "user", "content": "你好"}]})
    assert status == 500 and body["error"]["type"] == "server_error" and "AttributeError" in body["error"]["message"]


# -- the queue, and a crisis turn on every path out ---------------------------------------------------------
def health(url) -> dict:
    return http("GET", f"{url}/healthz")[2]


def call(url, text, stream=False):
    """One chat request through the openai client: (reply text, the safety object, finish_reason)."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": text}]
    if not stream:
        reply = client.chat.completions.create(model="psydt", messages=msgs, temperature=0, max_tokens=60)
        return reply.choices[0].message.content, reply.safety, reply.choices[0].finish_reason
    chunks = list(client.chat.completions.create(model="psydt", messages=msgs, temperature=0, max_tokens=60, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].safety["crisis"] == chunks[-1].safety["crisis"]  # the first event says it before any text
    return text, chunks[-1].safety, chunks[-1].choices[0].finish_reason  # the last has the turn's last word (unanswered)


def test_requests_past_the_limit_wait_in_the_queue_crisis_first_and_a_full_queue_is_429(loaded):
    """--max_concurrency 1 --max_queue 2: while the admitted request waits for the model (its lock held by the
    test), two more wait in the queue -- the crisis turn that came last ahead of the other -- and a fourth is
    refused 429 with Retry-After; once the model is free all three are answered, crisis turn second."""
    lock = threading.Lock()
    app, _ = app_for(loaded, lock=lock, max_concurrency=1, max_queue=2)
    calm = D0[1]["content"]
    done = []
    with in_process(app) as (url, _), ThreadPoolExecutor(3) as pool:

        def one(text):
            out = call(url, text)
            done.append(text)
            return out

        with lock:
            first = pool.submit(one, calm)
            wait_for(lambda: health(url)["running"] == 1, 30, "the first request admitted")
            queued = pool.submit(one, calm + "。")
            wait_for(lambda: health(url)["queued"] == 1, 30, "a request queued")
            crisis = pool.submit(one, CRISIS)
            wait_for(lambda: health(url)["queued"] == 2, 30, "the crisis turn queued")
            with pytest.raises(openai.RateLimitError) as refused:
                call(url, calm)
        assert refused.value.body["code"] == "rate_limit_exceeded" and "2" in refused.value.body["message"]
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert first.result(120)[0] == D0[2]["content"] and queued.result(120)[2] in ("stop", "length")
        text, safety, _ = crisis.result(120)
        assert safety["crisis"] and "unanswered" not in safety and text.startswith(HELP_OPEN)  # answered, not refused
        assert done == [calm, CRISIS, calm + "。"]
        assert health(url) == {"status": "ok", "running": 0, "queued": 0, "max_concurrency": 1, "max_queue": 2}


@pytest.mark.parametrize("why", ["queue full", "wait timed out"])
def test_a_crisis_turn_the_busy_server_cannot_answer_still_gets_the_help(loaded, why):
    """The page, the openai client and LangChain all show `content`: a refused crisis turn is a 200 whose content
    is the help and a line that the counsellor is busy (safety.unanswered "busy"); a calm turn gets its 429."""
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    lock = threading.Lock()
    queue = {"queue full": {"max_queue": 0}, "wait timed out": {"max_queue": 4, "queue_timeout": 0.2}}[why]
    app, _ = app_for(loaded, lock=lock, max_concurrency=1, **queue)
    with in_process(app) as (url, _), ThreadPoolExecutor(1) as pool:
        with lock:
            held = pool.submit(call, url, D0[1]["content"])
            wait_for(lambda: health(url)["running"] == 1, 30, "the first request admitted")
            for stream in (False, True):
                text, safety, finish = call(url, CRISIS, stream=stream)
                assert safety["crisis"] and safety["unanswered"] == "busy" and finish == "stop", stream
                assert text == HELP_OPEN + safety["notice"] + HELP_CLOSE + UNANSWERED["busy"], stream
                assert "12356" in safety["notice"] and safety["resources"]
            llm = ChatOpenAI(base_url=f"{url}/v1", api_key="x", model="psydt", max_retries=0, max_tokens=20)
            for shown in (llm.invoke([HumanMessage(CRISIS)]).content,
                          "".join(c.content for c in llm.stream([HumanMessage(CRISIS)]))):
                assert shown.startswith(HELP_OPEN) and "12356" in shown and shown.endswith(UNANSWERED["busy"])
            with pytest.raises(openai.RateLimitError) as refused:
                call(url, D0[1]["content"])
            assert ("排队 0.2 秒" if queue.get("queue_timeout") else "位置也满了") in refused.value.body["message"]
        assert held.result(120)[0] == D0[2]["content"]


def test_a_crisis_turn_too_long_to_answer_still_gets_the_help(loaded):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    app, backend = app_for(loaded, limit=200)
    calls = []
    real = backend.stream
    backend.stream = lambda *a, **k: calls.append(1) or real(*a, **k)
    long_crisis = CRISIS + "，" + "好" * 500
    with in_process(app) as (url, _):
        for stream in (False, True):
            text, safety, finish = call(url, long_crisis, stream=stream)
            assert safety["crisis"] and safety["unanswered"] == "too_long" and finish == "stop", stream
            assert text == HELP_OPEN + safety["notice"] + HELP_CLOSE + UNANSWERED["too_long"], stream
        shown = ChatOpenAI(base_url=f"{url}/v1", api_key="x", model="psydt", max_retries=0).invoke(
            [HumanMessage(long_crisis)]).content
        assert shown.startswith(HELP_OPEN) and "12356" in shown and shown.endswith(UNANSWERED["too_long"])
        status, _, body = http("POST", f"{url}/v1/chat/completions", {"messages": [{"role": "user", "content": "好" * 500}]})
        assert status == 400 and body["error"]["code"] == "context_length_exceeded"  # a calm one keeps its 400
        assert calls == [] and health(url)["running"] == 0


def test_a_calm_turn_too_long_for_the_model_is_a_400_even_when_busy(loaded):
    """Found before it queues: a full server would answer 429 ("retry later") to a request that can never fit."""
    lock = threading.Lock()
    app, _ = app_for(loaded, lock=lock, limit=200, max_concurrency=1, max_queue=0)
    with in_process(app) as (url, _), ThreadPoolExecutor(1) as pool:
        with lock:
            held = pool.submit(call, url, D0[1]["content"])
            wait_for(lambda: health(url)["running"] == 1, 30, "the first request admitted")
            status, headers, body = http("POST", f"{url}/v1/chat/completions",
                                         {"messages": [{"role": "user", "content": "好" * 500}]})
            assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
        held.result(120)


def test_a_crisis_turn_gets_the_help_when_generation_fails(loaded):
    """The engine fails (a remote engine's 429, a crash): a calm turn gets its 502 / error event, a crisis turn
    the help and a line that no reply could be made (safety.unanswered "error"), streamed or not."""
    app, backend = app_for(loaded)

    async def broken(*args, **kwargs):
        raise RuntimeError("engine down")
        yield  # an async generator, as a backend's stream is

    backend.stream = broken
    with in_process(app) as (url, _):
        text, safety, finish = call(url, CRISIS)
        assert safety["unanswered"] == "error" and finish == "stop"
        assert text == HELP_OPEN + safety["notice"] + HELP_CLOSE + UNANSWERED["error"]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        chunks = list(client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": CRISIS}], stream=True))
        assert chunks[0].safety["crisis"] and chunks[-1].safety["unanswered"] == "error"  # known once it failed
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert http("POST", f"{url}/v1/chat/completions", {"messages": [{"role": "user", "content": "你好"}]})[0] == 502
        with pytest.raises(openai.APIError):
            call(url, "你好", stream=True)
        assert health(url)["running"] == 0


def test_a_huge_message_is_screened_off_the_event_loop_and_only_in_part(loaded, monkeypatch):
    """The lexicon's screen before admission runs in a thread on at most both ends of the message: while it
    is held (a stub that waits for the test), /healthz still answers; a 60k-character message is not read whole."""
    from psydt_lora.inference import serving
    from psydt_lora.safety import session

    entered, go, read = threading.Event(), threading.Event(), []

    def held_detect(text, asked=None):
        read.append(len(text))
        entered.set()
        go.wait(60)
        return serving.Detection()

    monkeypatch.setattr(session, "detect", held_detect)  # the lexicon, as Safety.lexicon_check calls it
    app, _ = app_for(loaded, limit=200)
    with in_process(app) as (url, _), ThreadPoolExecutor(1) as pool:
        try:
            huge = pool.submit(http, "POST", f"{url}/v1/chat/completions",
                               {"messages": [{"role": "user", "content": "好" * 60000}]}, None, 120)
            assert entered.wait(60), "the screen never ran"
            assert http("GET", f"{url}/healthz", timeout=30)[0] == 200  # answered while the screen is held
        finally:
            go.set()
        assert huge.result(120)[0] == 400  # too long for the context (a calm turn: the stub found nothing)
    assert read == [2 * serving.SCREEN_CHARS + 1]  # both ends and the line break between them


def test_a_crisis_turn_in_a_refused_request_still_gets_the_help(loaded):
    """The user's turn is screened before the request's fields are checked: a crisis turn whose request is refused
    (a field we cannot honour, max_tokens 0, stream "true", an unknown model) is a 200 with the help and a line
    saying what was wrong (safety.unanswered "bad_request"); the same request with a calm turn keeps its 4xx."""
    app, _ = app_for(loaded)
    crisis = [{"role": "user", "content": CRISIS}]
    with in_process(app) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        for stream in (False, True):
            reply = client.chat.completions.create(model="psydt", messages=crisis, stream=stream,
                                                   extra_body={"presence_penalty": 0.5})
            chunks = list(reply) if stream else None
            text = "".join(c.choices[0].delta.content or "" for c in chunks) if stream else reply.choices[0].message.content
            safety = chunks[-1].safety if stream else reply.safety
            assert safety["crisis"] and safety["unanswered"] == "bad_request" and "12356" in safety["notice"], stream
            assert text.startswith(HELP_OPEN + safety["notice"] + HELP_CLOSE) and "presence_penalty" in text, stream
        for body, why in (({"max_tokens": 0}, "max_tokens"), ({"stream": "true"}, "stream"), ({"model": "gpt-4o"}, "gpt-4o"),
                          ({"response_format": {"type": "json_object"}}, "response_format")):
            status, _, out = http("POST", f"{url}/v1/chat/completions", {"messages": crisis, **body})
            assert status == 200 and out["safety"]["unanswered"] == "bad_request", body
            assert out["choices"][0]["message"]["content"].startswith(HELP_OPEN) and why in out["choices"][0]["message"]["content"]
            calm = http("POST", f"{url}/v1/chat/completions", {"messages": [{"role": "user", "content": "你好"}], **body})
            assert calm[0] in (400, 404) and "error" in calm[2], body
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": "你好"}],
                                           extra_body={"presence_penalty": 0.5})


def test_a_queued_crisis_stream_gets_the_help_at_once_and_the_reply_when_admitted(loaded):
    """--max_concurrency 1 --max_queue 2: while the model is held, a streamed crisis turn waits in the queue but its
    first event (safety and the help) arrives at once; the reply follows once a place is free. Refused after its
    wait, it ends with the line that the counsellor is busy."""
    lock = threading.Lock()
    app, _ = app_for(loaded, lock=lock, max_concurrency=1, max_queue=2, queue_timeout=60)
    with in_process(app) as (url, _), ThreadPoolExecutor(1) as pool:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
        with lock:
            held = pool.submit(call, url, D0[1]["content"])
            wait_for(lambda: health(url)["running"] == 1, 30, "the first request admitted")
            events = iter(client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": CRISIS}],
                                                         stream=True, max_tokens=20))
            first = next(events)  # while the model is still held
            assert health(url)["queued"] == 1  # it is waiting, and its help is out
        rest = list(events)
        assert held.result(120)[0] == D0[2]["content"]
        assert health(url)["running"] == 0 and health(url)["queued"] == 0  # its place given back
    assert first.safety["crisis"] and "12356" in first.safety["notice"]
    assert first.choices[0].delta.content == HELP_OPEN + first.safety["notice"] + HELP_CLOSE
    text = "".join(c.choices[0].delta.content or "" for c in rest)
    assert HELP_OPEN not in text and UNANSWERED["busy"] not in text  # answered: the help came once, then the reply
    assert rest[-1].choices[0].finish_reason in ("stop", "length") and "unanswered" not in rest[-1].safety
    assert rest[-1].safety["crisis"]


def test_a_queued_crisis_stream_whose_client_leaves_gives_up_its_place(loaded):
    """The client reads the help and goes away while its stream waits in the queue: it leaves the queue (no place
    held for nobody), and once the model is free nothing is left running."""
    lock = threading.Lock()
    app, _ = app_for(loaded, lock=lock, max_concurrency=1, max_queue=2, queue_timeout=60)
    with in_process(app) as (url, _), ThreadPoolExecutor(1) as pool:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
        with lock:
            held = pool.submit(call, url, D0[1]["content"])
            wait_for(lambda: health(url)["running"] == 1, 30, "the first request admitted")
            stream = client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": CRISIS}],
                                                    stream=True, max_tokens=20)
            assert next(iter(stream)).safety["crisis"] and health(url)["queued"] == 1
            stream.close()
            wait_for(lambda: health(url)["queued"] == 0, 30, "the gone client's stream to leave the queue")
        assert held.result(120)[0] == D0[2]["content"]
        wait_for(lambda: health(url)["running"] == 0, 30, "every place given back")


def test_a_resolved_past_is_told_to_the_client_as_a_check_in(loaded):
    """A resolved past (the lexicon lowers it: no crisis, check_in true) reaches the client in `safety`, streamed
    or not, without the crisis help."""
    app, _ = app_for(loaded)
    with in_process(app) as (url, _):
        for stream in (False, True):
            text, safety, _ = call(url, "以前我想过自杀，现在过得挺好", stream=stream)
            assert safety["check_in"] is True and safety["crisis"] is False and HELP_OPEN not in text, stream
        assert "check_in" not in call(url, D0[1]["content"])[1]


def test_fields_the_server_cannot_honour_are_refused_by_name(server):
    client = server.client()
    hello = [{"role": "user", "content": "你好"}]
    for field, value in (("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
                         ("response_format", {"type": "json_object"}), ("logprobs", True), ("top_logprobs", 2),
                         ("frequency_penalty", 0.5), ("top_k", 5)):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="psydt", messages=hello, extra_body={field: value})
        assert err.value.body["param"] == field and field in err.value.body["message"], field
    status, _, body = http("POST", f"{server.url}/v1/chat/completions", {"messages": hello, "stream": "yes"})
    assert status == 400 and body["error"]["param"] == "stream"
    # what clients send that asks for nothing is accepted; enable_thinking is what this project's gateway and judge send
    fine = client.chat.completions.create(model="psydt", messages=hello, max_tokens=5, user="u1", tools=[],
                                          logprobs=False, frequency_penalty=0, presence_penalty=0.0, parallel_tool_calls=True,
                                          response_format={"type": "text"}, n=1, stream=False,
                                          extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert fine.choices[0].finish_reason in ("stop", "length")


def test_the_history_window_is_told_to_the_client(server):
    """The API keeps the last --history_turns (6) earlier turns, as the chat does; the response says so."""
    msgs = []
    for i in range(9):
        msgs += [{"role": "user", "content": f"第{i}句"}, {"role": "assistant", "content": "嗯"}]
    msgs.append({"role": "user", "content": D0[1]["content"]})
    client = server.client()
    reply = client.chat.completions.create(model="psydt", messages=msgs, max_tokens=5)
    assert reply.history == {"window_turns": 6, "turns_sent": 9, "turns_used": 6, "turns_dropped": 3}
    first = next(iter(client.chat.completions.create(model="psydt", messages=msgs[-3:], max_tokens=5, stream=True)))
    assert first.history == {"window_turns": 6, "turns_sent": 1, "turns_used": 1, "turns_dropped": 0}


@pytest.mark.parametrize("how", ["idle", pytest.param("busy", marks=pytest.mark.slow),
                                 pytest.param("forced", marks=pytest.mark.slow)])
def test_ctrl_c_ends_the_server_with_130_and_no_traceback(tiny_model_dir, how):
    """Idle; with a stream under way (it is allowed to finish); and a second Ctrl-C that quits at once. uvicorn
    raised SIGINT again inside its loop once it had shut down: a KeyboardInterrupt traceback and exit 1 (and
    with a second Ctrl-C, cancelled tasks' tracebacks)."""
    s = Server("--model_path", str(tiny_model_dir), "--no_adapter", "--no-do_sample", "--max_new_tokens", "400")
    try:
        if how != "idle":  # the random model talks until max_tokens: the stream is still under way at the signal
            stream = iter(s.client().chat.completions.create(
                model="psydt", messages=[{"role": "user", "content": D0[1]["content"]}], stream=True, temperature=0))
            next(stream), next(stream)
        s.proc.send_signal(signal.SIGINT)
        if how == "busy":
            assert list(stream)[-1].choices[0].finish_reason == "length"  # finished, all 400 tokens
        if how == "forced":
            next(stream)
            s.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(openai.APIError, OSError, StopIteration):
                list(stream)  # cut off
        assert s.proc.wait(60) == 130
    finally:
        log = s.stop()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log and "CancelledError" not in log, log[-3000:]
    assert "已停止" in log
