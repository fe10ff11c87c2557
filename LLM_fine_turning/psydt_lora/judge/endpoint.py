"""Any OpenAI-compatible server (vLLM, SGLang, a hosted API, this project's `--mode serve`) as judge or
generator: the official `openai` client, a thread pool for concurrency, retries with back-off on 429 /
5xx / timeouts / dropped connections, and a persistent cache so a rerun or a resumed run sends nothing twice.

The cache is one SQLite file; every answer is committed the moment it arrives, so a run killed half-way
keeps what it got and the next run asks only for the rest. The key is the model, the purpose (a rubric's
id and version, or the generation settings) and the exact messages; the server's URL is not in it (the
same judge model behind another host gives the same verdicts), the API key never is anywhere.
"""
import hashlib
import json
import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from psydt_lora.errors import PsyDTError

RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)


@dataclass
class EndpointConfig:
    url: str
    model: str
    api_key: str | None = None  # kept in memory only: never in `describe()`, a file or a log
    concurrency: int = 8
    timeout: float = 120.0  # seconds per request
    retries: int = 5  # extra attempts after the first, on 429 / 5xx / timeouts
    backoff: float = 1.0  # first wait in seconds, doubled each retry (Retry-After wins when the server sends it)
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
    text: str | None  # None when the request failed for good (then `error` says why)
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

    def describe(self) -> str:
        return (f"请求 {self.requests} 次（重试 {self.retries}，失败 {self.failed}），缓存命中 {self.cached}，"
                f"输入 {self.prompt_tokens} + 输出 {self.completion_tokens} token，用时 {self.seconds:.1f} 秒")


class Endpoint:
    def __init__(self, config: EndpointConfig, cache: Cache):
        from openai import OpenAI

        self.config, self.cache = config, cache
        # our own retry loop (max_retries=0) so every request sent is counted and reported
        self.client = OpenAI(base_url=config.url, api_key=config.api_key or "none", timeout=config.timeout,
                             max_retries=0)
        self.usage = Usage()
        self.lock = threading.Lock()

    def sampling(self, seed: int | None = None) -> dict:
        """The config's sampling, with a per-request seed when one is given (a simulated client's per profile)."""
        return {**self.config.sampling(), **({"seed": seed} if seed is not None else {})}

    def key(self, purpose: str, messages: list[dict], seed: int | None = None) -> str:
        blob = json.dumps({"model": self.config.model, "purpose": purpose, "sampling": self.sampling(seed),
                           "messages": messages}, ensure_ascii=False, sort_keys=True)
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
        if answer.error is None:  # a failure is not remembered: the next run tries again
            self.cache.put(key, self.config.model, purpose, {"text": answer.text, "finish_reason": answer.finish_reason,
                                                             "prompt_tokens": answer.prompt_tokens,
                                                             "completion_tokens": answer.completion_tokens})
        return answer

    def _request(self, messages, seed: int | None = None) -> Answer:
        import openai

        c = self.config
        sampling = {k: v for k, v in self.sampling(seed).items() if k != "extra_body"}
        for attempt in range(c.retries + 1):
            with self.lock:
                self.usage.requests += 1
                self.usage.retries += attempt > 0
            try:
                res = self.client.chat.completions.create(model=c.model, messages=messages,
                                                          extra_body=c.extra_body or None, **sampling)
            except (openai.APITimeoutError, openai.APIConnectionError) as err:
                reason, wait = f"{type(err).__name__}", None
            except openai.APIStatusError as err:
                if err.status_code in (401, 403, 404):
                    raise PsyDTError(f"{c.url} 拒绝了请求（HTTP {err.status_code}）：检查地址、模型名 {c.model!r} "
                                     "和 API key（--*_api_key 或环境变量）。") from None
                if err.status_code not in RETRY_STATUS:
                    return Answer(None, error=f"HTTP {err.status_code}")
                reason, wait = f"HTTP {err.status_code}", _retry_after(err.response)
            else:
                return _answer(res)
            if attempt < c.retries:
                time.sleep(wait if wait is not None else c.backoff * 2 ** attempt * (0.5 + random.random() / 2))
        return Answer(None, error=reason)

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
    PsyDTError (bad key, unknown model) stops the run; the jobs not yet started are cancelled."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress)
    results: list = [None] * len(jobs)

    def one(i):
        results[i] = fn(jobs[i])
        bar.update(1)

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for future in [pool.submit(one, i) for i in range(len(jobs))]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return results
