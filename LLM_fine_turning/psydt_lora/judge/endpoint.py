"""Any OpenAI-compatible server (vLLM, SGLang, a hosted API, this project's `--mode serve`) as judge or
generator: the official `openai` client, a thread pool for concurrency, retries with back-off on 429 /
5xx / timeouts / dropped connections, and a persistent cache so a rerun or a resumed run sends nothing twice.

The cache is one SQLite file; every answer is committed the moment it arrives, so a run killed half-way
keeps what it got and the next run asks only for the rest. The key is the server's URL, the model, the
purpose (a rubric's id and version, or the generation settings) and the exact messages: two servers that
serve one model name (the adapter on one port, the base model on another) never share an answer. The API
key is never in it, nor anywhere else.

A request that fails for good is named by its kind (`connection`, `timeout`, `http 503`), never taken for
an answer. The wait before a retry doubles each time and is never shorter than the server's Retry-After;
the requests in flight to one server are halved on a 429 and grow back by one after as many answers in a
row (a Gate), so a server that admits fewer than `concurrency` is not hammered until the retries run out.
"""
import hashlib
import json
import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from psydt_lora.errors import PsyDTError

RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)
MAX_WAIT = 60.0  # seconds: the longest wait before a retry
FAILURE_NAMES = {"connection": "连接失败", "timeout": "超时", "http": "HTTP 错误", "no_reply": "没有可评的回复"}


@dataclass
class EndpointConfig:
    url: str
    model: str
    api_key: str | None = None  # kept in memory only: never in `describe()`, a file or a log
    concurrency: int = 8
    timeout: float = 120.0  # seconds per request
    retries: int = 5  # extra attempts after the first, on 429 / 5xx / timeouts
    backoff: float = 1.0  # first wait in seconds, doubled each retry (never shorter than the server's Retry-After)
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 512
    seed: int | None = None
    extra_body: dict = field(default_factory=dict)  # e.g. vLLM's chat_template_kwargs; {} for hosted APIs

    def sampling(self) -> dict:
        """What decides the answer besides the messages (part of the cache key)."""
        out = {"temperature": self.temperature, "max_tokens": self.max_tokens, "extra_body": self.extra_body}
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    def describe(self) -> dict:
        """The endpoint's identity and settings for the report: no key."""
        return {"url": self.url, "model": self.model, "concurrency": self.concurrency, "timeout": self.timeout,
                "retries": self.retries, **self.sampling()}


@dataclass
class Answer:
    text: str | None  # None when the request failed for good (then `error` names the kind: see failure_kind)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    error: str | None = None


class Cache:
    """Answers on disk, one SQLite row per (key); safe to share between this process's threads."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        try:
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, purpose TEXT, "
                            "answer TEXT, created REAL)")
        except sqlite3.DatabaseError as err:
            raise PsyDTError(f"缓存文件 {self.path} 无法打开（{err}）：换一个 --cache 路径，或删除这个文件重新开始。") from None

    def get(self, key: str) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, model: str, purpose: str, answer: dict) -> None:
        with self.lock:  # autocommit: the row is on disk when this returns
            self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                            (key, model, purpose, json.dumps(answer, ensure_ascii=False), time.time()))

    def __len__(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self.db.close()


@dataclass
class Usage:
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    answered: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    failures: dict = field(default_factory=dict)  # error ("connection", "timeout", "http 503") -> answers lost to it

    def describe(self) -> str:
        lost = f"（{describe_failures(self.failures)}）" if self.failures else ""
        return (f"请求 {self.requests} 次（重试 {self.retries}，失败 {self.failed}{lost}），缓存命中 {self.cached}，"
                f"输入 {self.prompt_tokens} + 输出 {self.completion_tokens} token，用时 {self.seconds:.1f} 秒")

    def all_failed(self) -> bool:
        """Every answer this run needed failed: nothing answered, nothing from the cache."""
        return self.failed > 0 and self.answered == 0 and self.cached == 0


def failure_kind(error: str) -> str:
    """`connection`, `timeout`, `http` or `no_reply` for an Answer's error."""
    first = (error.split() or [""])[0]
    return first if first in FAILURE_NAMES else error


def failure_counts(errors) -> dict:
    """{error: how many} over the errors given (None skipped), in first-seen order."""
    out: dict = {}
    for e in errors:
        if e:
            out[e] = out.get(e, 0) + 1
    return out


def describe_failures(counts: dict) -> str:
    """`连接失败 6，HTTP 503 2` for {error: n}."""
    def name(e):
        kind = failure_kind(e)
        return e.upper() if kind == "http" else FAILURE_NAMES.get(kind, e)
    return "，".join(f"{name(e)} {n}" for e, n in counts.items())


class Gate:
    """The requests in flight to one server: at most `limit`, which starts at the configured concurrency, is
    halved on a 429 (once per wave: a 429 to a request sent before the last cut does not cut again) and
    grows back by one after `limit` answers in a row, never above where it started (AIMD, as TCP does)."""

    def __init__(self, ceiling: int):
        self.ceiling = self.limit = max(1, ceiling)
        self.in_flight = self.epoch = self.streak = 0
        self.cond = threading.Condition()

    def enter(self) -> int:
        with self.cond:
            self.cond.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
            return self.epoch

    def leave(self, epoch: int, outcome: str) -> None:
        """outcome: "ok" (an answer), "throttled" (a 429) or anything else (neither)."""
        with self.cond:
            self.in_flight -= 1
            if outcome == "throttled" and epoch == self.epoch:
                self.limit, self.epoch, self.streak = max(1, self.limit // 2), self.epoch + 1, 0
            elif outcome == "ok":
                self.streak += 1
                if self.streak >= self.limit and self.limit < self.ceiling:
                    self.limit, self.streak = self.limit + 1, 0
            self.cond.notify_all()


def backoff_wait(attempt: int, base: float, retry_after: float | None = None) -> float:
    """Seconds before retry `attempt + 1`: base * 2**attempt with jitter (half to all of it), never shorter
    than the server's Retry-After, at most MAX_WAIT."""
    grown = base * 2 ** attempt * (0.5 + random.random() / 2)
    return min(MAX_WAIT, max(retry_after or 0.0, grown))


class Endpoint:
    def __init__(self, config: EndpointConfig, cache: Cache):
        from openai import OpenAI

        self.config, self.cache = config, cache
        # our own retry loop (max_retries=0) so every request sent is counted and reported
        self.client = OpenAI(base_url=config.url, api_key=config.api_key or "none", timeout=config.timeout,
                             max_retries=0)
        self.usage = Usage()
        self.lock = threading.Lock()
        self.gate = Gate(config.concurrency)
        self.unreachable = False  # the first probe found nothing listening at the URL (check_model)

    def sampling(self, seed: int | None = None) -> dict:
        """The config's sampling, with a per-request seed when one is given (a simulated client's per profile)."""
        return {**self.config.sampling(), **({"seed": seed} if seed is not None else {})}

    def key(self, purpose: str, messages: list[dict], seed: int | None = None) -> str:
        blob = json.dumps({"url": self.config.url.rstrip("/"), "model": self.config.model, "purpose": purpose,
                           "sampling": self.sampling(seed), "messages": messages}, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def ask(self, purpose: str, messages: list[dict], seed: int | None = None) -> Answer:
        """One answer: from the cache, else from the server (committed to the cache at once)."""
        key = self.key(purpose, messages, seed)
        hit = self.cache.get(key)
        if hit is not None:
            with self.lock:
                self.usage.cached += 1
            return Answer(**hit, cached=True)
        answer = self._request(messages, seed)
        with self.lock:
            self.usage.prompt_tokens += answer.prompt_tokens
            self.usage.completion_tokens += answer.completion_tokens
            if answer.error is None:
                self.usage.answered += 1
            else:
                self.usage.failed += 1
                self.usage.failures[answer.error] = self.usage.failures.get(answer.error, 0) + 1
        if answer.error is None:  # a failure is not remembered: the next run tries again
            self.cache.put(key, self.config.model, purpose, {"text": answer.text, "finish_reason": answer.finish_reason,
                                                             "prompt_tokens": answer.prompt_tokens,
                                                             "completion_tokens": answer.completion_tokens})
        return answer

    def _request(self, messages, seed: int | None = None) -> Answer:
        """One answer from the server, retried on 429 / 5xx / timeouts / dropped connections; a failure for
        good is an Answer whose error names its kind."""
        c = self.config
        for attempt in range(c.retries + 1):
            with self.lock:
                self.usage.requests += 1
                self.usage.retries += attempt > 0
            epoch = self.gate.enter()
            outcome = "failed"
            try:
                result, retry_after = self._send(messages, seed)
                outcome = "ok" if isinstance(result, Answer) else "throttled" if result == "http 429" else "failed"
            finally:
                self.gate.leave(epoch, outcome)
            if isinstance(result, Answer):
                return result
            if result.startswith("http") and int(result.split()[1]) not in RETRY_STATUS:
                return Answer(None, error=result)
            if attempt < c.retries:
                time.sleep(backoff_wait(attempt, c.backoff, retry_after))
        return Answer(None, error=result)

    def _send(self, messages, seed):
        """(Answer, None) or (the error's kind, the server's Retry-After); 401 / 403 / 404 end the run."""
        import openai

        c = self.config
        sampling = {k: v for k, v in self.sampling(seed).items() if k != "extra_body"}
        try:
            res = self.client.chat.completions.create(model=c.model, messages=messages,
                                                      extra_body=c.extra_body or None, **sampling)
        except openai.APITimeoutError:  # a subclass of APIConnectionError: caught first
            return "timeout", None
        except openai.APIConnectionError:
            return "connection", None
        except openai.APIStatusError as err:
            if err.status_code in (401, 403):
                raise PsyDTError(f"{c.url} 拒绝了请求（HTTP {err.status_code}）：检查 API key（--*_api_key 或环境变量）"
                                 f"和模型名 {c.model!r} 是否允许使用。") from None
            if err.status_code == 404:
                raise PsyDTError(self.not_found()) from None
            return f"http {err.status_code}", _retry_after(err.response)
        return _answer(res), None

    def served_models(self) -> list[str] | None:
        """The model names GET <url>/models lists, or None when the server does not say."""
        import openai

        try:
            listed = self.client.with_options(timeout=min(10.0, self.config.timeout)).models.list()
            return [m.id for m in listed.data]
        except openai.APITimeoutError:
            return None
        except openai.APIConnectionError:  # nothing listening (or no route): no server to wait for
            self.unreachable = True
            return None
        except Exception:  # noqa: BLE001 -- any other failure here only means we cannot tell
            return None

    def server_limit(self) -> int | None:
        """The requests the server says it handles at once: `max_concurrency` in GET <root>/healthz (this
        project's server reports it there), or None when it does not say."""
        import httpx

        root = self.config.url.rstrip("/").removesuffix("/v1")
        try:
            state = httpx.get(f"{root}/healthz", timeout=min(10.0, self.config.timeout)).json()
            limit = state.get("max_concurrency")
            return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
        except Exception:  # noqa: BLE001 -- any failure here only means we cannot tell
            return None

    def fit_server(self) -> int | None:
        """Never more in flight than the server says it handles: the Gate's ceiling lowered to its limit
        (returned when it was lowered)."""
        limit = self.server_limit()
        if limit is not None and limit < self.gate.ceiling:
            self.gate = Gate(limit)
            return limit
        return None

    def check_model(self) -> None:
        """Before any work: a server that lists its models and not ours is refused now, not after a whole pass.
        A listed name that differs only as hosted APIs spell it (Gemini's `models/x`, Ollama's `x:latest`) counts."""
        served, model = self.served_models(), self.config.model
        if self.unreachable and self.config.retries:
            print(f"[接口] 连不上 {self.config.url}（没有服务在听？）：每条只试一次、不再重试等待，这一轮会很快结束并报告失败")
            self.config = replace(self.config, retries=0)
        if served and not any(m in (model, f"{model}:latest") or m.endswith(f"/{model}") for m in served):
            raise PsyDTError(self.not_found(served))

    def not_found(self, served: list[str] | None = None) -> str:
        c = self.config
        served = self.served_models() if served is None else served
        listed = f"它提供的模型：{'、'.join(map(repr, served))}" if served else "它没有列出自己提供的模型"
        return (f"{c.url} 上没有模型 {c.model!r}（HTTP 404；{listed}）。检查地址和模型名。本项目的服务只提供"
                " --served_model_name 这一个名字（默认 psydt）：基础模型的服务请加 --no_adapter --served_model_name base"
                "，再用 --gen_base_model base；vLLM 用 --served-model-name 或 --lora-modules 名字=路径。")

    def ask_all(self, jobs: list[tuple[str, list[dict]]], desc: str, progress: bool = True) -> list[Answer]:
        """Answers to (purpose, messages) jobs in order, `concurrency` at a time, with a progress bar."""
        started = time.time()
        results = in_parallel(lambda job: self.ask(*job), jobs, self.config.concurrency, desc, "条", progress)
        self.usage.seconds += time.time() - started
        return results


def _retry_after(response) -> float | None:
    """The server's Retry-After (seconds or milliseconds), capped at a minute."""
    try:
        if "retry-after-ms" in response.headers:
            return min(float(response.headers["retry-after-ms"]) / 1000, 60.0)
        return min(float(response.headers["retry-after"]), 60.0)
    except (KeyError, TypeError, ValueError):
        return None


def _answer(res) -> Answer:
    choice = res.choices[0] if res.choices else None
    usage = res.usage
    return Answer(text=(choice.message.content or "") if choice else "",
                  finish_reason=choice.finish_reason if choice else None,
                  prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                  completion_tokens=getattr(usage, "completion_tokens", 0) or 0)


def in_parallel(fn, jobs: list, workers: int, desc: str, unit: str, progress: bool = True) -> list:
    """`fn(job)` for every job, `workers` at a time, results in the jobs' order, with a progress bar. The first
    PsyDTError (bad key, unknown model) stops the run; the jobs not yet started are cancelled (on Ctrl-C
    without waiting for those in flight)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress)
    results: list = [None] * len(jobs)

    def one(i):
        results[i] = fn(jobs[i])
        bar.update(1)

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    interrupted = False
    try:
        for future in [pool.submit(one, i) for i in range(len(jobs))]:
            future.result()
    except KeyboardInterrupt:  # Ctrl-C: no wait for the requests in flight (what arrived is in the cache)
        interrupted = True
        raise
    finally:
        pool.shutdown(wait=not interrupted, cancel_futures=True)
        bar.close()
    return results
