"""The counsellor over HTTP: an OpenAI-compatible chat API (FastAPI + uvicorn) with the safety layer in
front of the model, and a small chat page at `/`.

Backends: `hf` generates in this process (one reply at a time on the model); `openai` forwards generation
to any OpenAI-compatible engine (vLLM, SGLang, another instance of this server) while this process stays
the safety gateway. Either way at most `max_concurrency` requests are admitted, up to `max_queue` more wait
for a place (`queue_timeout` seconds at most, crisis turns first), and the rest are answered 429 with a
Retry-After -- except a crisis turn, which the lexicon finds in the raw body before its fields are checked
and before admission: refused (busy, a bad request) or too long, it is answered 200 with the help and a line
saying why there is no reply (`safety.unanswered`); streamed and queued, its help goes out before the wait.

Every request goes through `conversation.prepare_turn` -- the same history window, crisis detection,
safety instruction and context fitting as the terminal chat -- and its reply through the same reply
screen. The response carries a `safety` object (documented in the README); a stream sends it in its
first event, before any reply text. On a crisis turn the help also leads the reply's content (see
openai_api), for clients that keep nothing else. Request text is never logged; nothing is stored on the server.
"""
import asyncio
import contextlib
import hmac
import html
import json
import logging
import math
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from psydt_lora.inference.conversation import prepare_turn, reply_screen
from psydt_lora.inference.generation import GenerationSettings, stream_reply
from psydt_lora.inference.openai_api import (HELP_CLOSE, HELP_OPEN, UNANSWERED, ChatRequest, RequestError, StopCut, chunk,
                                             error_body, error_event, help_block, parse_request, usage_chunk,
                                             without_help)
from psydt_lora.prompt import round_starts
from psydt_lora.safety.rules import Detection
from psydt_lora.safety.session import DisabledSafety

PAGE = Path(__file__).with_name("web") / "chat.html"
ICON = Path(__file__).with_name("web") / "favicon.svg"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
INTERRUPTED = 130  # the exit status after Ctrl-C (128 + SIGINT), as shells report it


@dataclass
class ServeConfig:
    model_name: str
    system: str | None
    history_turns: int
    settings: GenerationSettings  # defaults; a request may change max_tokens, temperature, top_p
    max_tokens_cap: int
    max_body_bytes: int = 1 << 20
    api_key: str | None = None
    max_concurrency: int = 8
    cors_origins: list = field(default_factory=list)
    disclaimer: str = ""
    help_in_content: bool = True  # a crisis turn's help also leads the reply's content (--crisis_help_in_content)
    max_queue: int = 0  # requests that may wait for a place (--max_queue); 0: refused at once when all are taken
    queue_timeout: float = 60.0  # seconds a request waits in the queue before it is refused (--queue_timeout)


# -- backends ----------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a backend reports once a reply is complete."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


class HFBackend:
    """The model in this process. Replies are generated one at a time (a lock around the model)."""

    def __init__(self, model, tokenizer, context_limit: int, lock=None):
        self.model, self.tokenizer, self.limit = model, tokenizer, context_limit
        # the model's lock: generation holds it, and so does a guard judging on this same model
        # (--safety_model base switches the adapter off), which is given the same lock when it is built
        self.lock = lock or threading.Lock()

    async def stream(self, turn, settings: GenerationSettings, seed, outcome: Outcome, stop=()):
        """The reply's pieces; `stop` strings are cut by the caller, which then closes this stream."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        halt = threading.Event()

        def work():
            from transformers import set_seed

            try:
                with self.lock:
                    if seed is not None:
                        set_seed(seed)
                    done = stream_reply(self.model, self.tokenizer, turn.ids, settings,
                                        lambda piece: loop.call_soon_threadsafe(queue.put_nowait, piece), halt)
                outcome.prompt_tokens = len(turn.ids)
                outcome.completion_tokens = done.tokens
                outcome.finish_reason = "length" if done.hit_limit else "stop"
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except BaseException as err:  # surfaced in the request's task
                loop.call_soon_threadsafe(queue.put_nowait, err)

        worker = loop.run_in_executor(None, work)
        try:
            while True:
                piece = await queue.get()
                if piece is None:
                    break
                if isinstance(piece, BaseException):
                    raise piece
                yield piece
        finally:
            halt.set()  # the client went away, or a stop string was reached: stop generating
            await worker


class OpenAIBackend:
    """Generation by a remote OpenAI-compatible engine; thinking is switched off the way Qwen3's
    template expects (`chat_template_kwargs`)."""

    def __init__(self, url: str, model: str, api_key: str | None, tokenizer=None, context_limit: int | None = None):
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(base_url=url, api_key=api_key or "none", max_retries=0)
        self.model, self.tokenizer, self.limit = model, tokenizer, context_limit

    async def stream(self, turn, settings: GenerationSettings, seed, outcome: Outcome, stop=()):
        kwargs = {"temperature": settings.temperature if settings.do_sample else 0.0, "max_tokens": settings.max_new_tokens}
        if settings.do_sample:
            kwargs["top_p"] = settings.top_p
        if seed is not None:
            kwargs["seed"] = seed
        if stop:
            kwargs["stop"] = stop
        stream = await self.client.chat.completions.create(
            model=self.model, messages=turn.messages, stream=True, stream_options={"include_usage": True},
            extra_body={"chat_template_kwargs": {"enable_thinking": settings.enable_thinking}}, **kwargs)
        async for part in stream:
            if part.usage is not None:
                outcome.prompt_tokens = part.usage.prompt_tokens
                outcome.completion_tokens = part.usage.completion_tokens
            for choice in part.choices:
                if choice.finish_reason:
                    outcome.finish_reason = choice.finish_reason
                if choice.delta and choice.delta.content:
                    yield choice.delta.content


# -- one request ---------------------------------------------------------------------------------------
class Admission:
    """At most `limit` requests in flight and at most `queue` waiting for a place, each for up to `timeout`
    seconds (then refused); a crisis turn waits ahead of the others. The check and the count happen with no
    `await` between them, and every request runs on the one event loop, so two requests can never both take
    the last place. A place given back goes straight to the first waiter (it is never free in between)."""

    def __init__(self, limit: int, queue: int = 0, timeout: float = 60.0):
        self.limit, self.queue, self.timeout, self.taken = limit, queue, timeout, 0
        self.waiting: list = []  # (urgent, future), in the order they are served
        self.hold = 1.0  # seconds a request keeps its place, a moving average (for Retry-After)

    async def enter(self, urgent: bool = False) -> str | None:
        """None once admitted; "full" (no room to wait) or "timeout" (waited `timeout` seconds) when refused."""
        if self.taken < self.limit and not self.waiting:
            self.taken += 1
            return None
        if len(self.waiting) >= self.queue:
            return "full"
        place = asyncio.get_running_loop().create_future()
        ahead = sum(1 for u, _ in self.waiting if u) if urgent else len(self.waiting)
        self.waiting.insert(ahead, (urgent, place))
        try:
            await asyncio.wait_for(asyncio.shield(place), self.timeout)
            return None
        except asyncio.TimeoutError:
            return None if self._withdraw(place) else "timeout"
        except asyncio.CancelledError:  # the client went away while waiting: a place already given passes on
            if self._withdraw(place):
                self.leave()
            raise

    def must_wait(self) -> bool:
        """A request coming now would wait in the queue (neither admitted at once nor refused as "full")."""
        return (self.taken >= self.limit or bool(self.waiting)) and len(self.waiting) < self.queue

    def _withdraw(self, place) -> bool:
        """Out of the queue; True when the place had been given to it in the meantime."""
        self.waiting = [w for w in self.waiting if w[1] is not place]
        if place.done():
            return True
        place.cancel()
        return False

    def leave(self, held: float | None = None) -> None:
        if held is not None:
            self.hold = 0.8 * self.hold + 0.2 * held
        if self.waiting:
            self.waiting.pop(0)[1].set_result(None)  # the place moves to the first waiter: `taken` is unchanged
        else:
            self.taken -= 1

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on by one: the waiting ahead times the time a place is held."""
        return max(1, min(60, math.ceil(self.hold * (len(self.waiting) + 1) / self.limit)))

    def state(self) -> dict:
        return {"running": self.taken, "queued": len(self.waiting), "max_concurrency": self.limit, "max_queue": self.queue}


def safety_block(safety, turn, screened: bool = False) -> dict:
    """The `safety` object of a response (see Safety.response_block; {"enabled": false} with the layer off)."""
    return safety.response_block(turn.detection, screened)


class Reply:
    """One reply on its way out: cut at a stop string, screened as it streams (held whole on a crisis turn,
    as in the chat), and led by the help block on a crisis turn."""

    def __init__(self, safety, turn, request: ChatRequest, help_in_content: bool):
        self.safety, self.turn = safety, turn
        self.screen = reply_screen(safety, turn)
        self.cut = StopCut(request.stop)
        self.lead = help_block(safety.notice(turn.detection)) if help_in_content and turn.crisis else ""

    def feed(self, piece: str) -> str:
        return self.screen.feed(self.cut.feed(piece))

    @property
    def stopped(self) -> bool:
        return self.cut.hit

    def finish(self) -> tuple[str, bool]:
        """(the rest to send, screened). A screened reply ends with the safe reply instead."""
        early = self.screen.feed(self.cut.flush())
        done = self.screen.finish()  # the screen keeps the whole reply; a screened one ends with the safe reply
        return (done.tail, True) if done.blocked else (early + done.rest, False)


def usage(outcome: Outcome) -> dict:
    return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}


async def generate(backend, reply: Reply, turn, request: ChatRequest, outcome: Outcome):
    """The backend's pieces through `reply`; ends early (finish_reason "stop") at a stop string."""
    async with contextlib.aclosing(backend.stream(turn, request.settings, request.seed, outcome, request.stop)) as pieces:
        async for piece in pieces:
            shown = reply.feed(piece)
            if shown:
                yield shown
            if reply.stopped:
                break  # closing the stream stops the generation
    if reply.stopped:
        outcome.finish_reason = "stop"


async def stream_events(backend, safety, config, turn, request: ChatRequest, rid, created, led: bool = False):
    """Server-sent events in OpenAI's chunk schema. The first carries `safety`, the effective max_tokens and,
    on a crisis turn, the help block as the first content (resources before the reply); `led`: that event (role,
    help) already went out while the turn waited for a place, this one only adds the admitted turn's safety."""
    model = config.model_name
    reply, outcome = Reply(safety, turn, request, config.help_in_content), Outcome()
    first = {"content": ""} if led else {"role": "assistant", "content": reply.lead}
    yield chunk(rid, model, created, first, safety=safety_block(safety, turn),
                max_tokens=request.settings.max_new_tokens, history=history_used(request, turn, config))
    try:
        async for shown in generate(backend, reply, turn, request, outcome):
            yield chunk(rid, model, created, {"content": shown})
    except Exception as err:
        if not turn.crisis:
            yield error_event(f"生成失败：{type(err).__name__}", "backend_error")
            return
        # the help went first and nothing of a crisis turn's reply is shown before it is whole: end as a reply
        yield chunk(rid, model, created, {"content": UNANSWERED["error"]})
        yield chunk(rid, model, created, {}, finish="stop", safety=unanswered_block(safety, turn.detection, "error"))
        yield "data: [DONE]\n\n"
        return
    rest, screened = await asyncio.to_thread(reply.finish)  # the guard screens the whole reply
    if rest:
        yield chunk(rid, model, created, {"content": rest})
    yield chunk(rid, model, created, {}, finish=outcome.finish_reason, safety=safety_block(safety, turn, screened))
    if request.include_usage:
        yield usage_chunk(rid, model, created, usage(outcome))
    yield "data: [DONE]\n\n"


async def complete(backend, safety, config, turn, request: ChatRequest, rid, created) -> dict:
    reply, outcome = Reply(safety, turn, request, config.help_in_content), Outcome()
    shown = [piece async for piece in generate(backend, reply, turn, request, outcome)]
    rest, screened = await asyncio.to_thread(reply.finish)  # the guard screens the whole reply
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": config.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.lead + "".join(shown) + rest},
                     "finish_reason": outcome.finish_reason}],
        "usage": usage(outcome),
        "max_tokens": request.settings.max_new_tokens,
        "history": history_used(request, turn, config),
        "safety": safety_block(safety, turn, screened),
    }


def history_used(request: ChatRequest, turn, config) -> dict:
    """How many of the earlier turns (a user message and the reply to it) the request sent reached the model:
    the last `--history_turns` of them, fewer when the context is too short for those."""
    sent, used = len(round_starts(request.messages)) - 1, len(round_starts(turn.messages)) - 1
    return {"window_turns": config.history_turns, "turns_sent": sent, "turns_used": used, "turns_dropped": sent - used}


# -- a crisis turn that cannot be answered still gets the help ------------------------------------------------
# what the screen before admission reads of a long user turn: its first and last SCREEN_CHARS characters. A chat
# message is a few hundred characters (the longest user turn in the shared real sets: 418 in the counselling
# dialogues, 567 in the Weibo posts, 300 in PsySUICIDE), so any real message is read whole; a 60k-character paste
# is read at both ends, a bounded cost. The admitted turn is still read whole (prepare_turn, off the loop).
SCREEN_CHARS = 8000


def screened_part(text: str) -> str:
    """The text the screen before admission reads: all of it, or its two ends (a line break between them)."""
    return text if len(text) <= 2 * SCREEN_CHARS else f"{text[:SCREEN_CHARS]}\n{text[-SCREEN_CHARS:]}"


def words_only(safety, messages) -> Detection:
    """The lexicon alone on the user's turn (no model: cheap enough to run before admission; run off the event
    loop all the same, on at most 2 * SCREEN_CHARS of it). The guard, when there is one, still judges every
    admitted turn (prepare_turn)."""
    return safety.lexicon_check(messages, screened_part) if messages else Detection()


def raw_user_turn(body) -> list[dict]:
    """The request's messages up to its last user message, read as loosely as can be (text content only), so a
    crisis turn is found before the request's fields are checked; [] when there is none."""
    raw = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(raw, list):
        return []
    found = []
    for m in raw:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if isinstance(content, str) and m.get("role") in ("user", "assistant"):
            found.append({"role": m["role"], "content": without_help(content) if m["role"] == "assistant" else content})
    while found and found[-1]["role"] != "user":
        found.pop()
    return found


def unanswered_block(safety, detection, why: str) -> dict:
    return {**safety.response_block(detection), "unanswered": why}


def unanswered_text(safety, detection, why: str, help_in_content: bool, detail: str = "") -> tuple[str, str]:
    """(the help block, the line saying why there is no reply): the help leads as on any crisis turn."""
    return help_block(safety.notice(detection)) if help_in_content else "", UNANSWERED[why].format(detail=detail)


def unanswered(safety, config, detection, why: str, request: ChatRequest, detail: str = ""):
    """A normal completion (or stream) whose content is the help and a line saying why the counsellor does not
    answer ("busy" | "too_long" | "error" | "bad_request", with `detail`): every client shows it. Status 200,
    finish_reason "stop", no tokens."""
    from fastapi.responses import JSONResponse, StreamingResponse

    rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), config.model_name
    lead, line = unanswered_text(safety, detection, why, config.help_in_content, detail)
    block, nothing = unanswered_block(safety, detection, why), usage(Outcome())
    if not request.stream:
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": lead + line}, "finish_reason": "stop"}],
            "usage": nothing, "max_tokens": request.settings.max_new_tokens, "safety": block})
    events = [chunk(rid, model, created, {"role": "assistant", "content": lead}, safety=block,
                    max_tokens=request.settings.max_new_tokens),
              chunk(rid, model, created, {"content": line}),
              chunk(rid, model, created, {}, finish="stop", safety=block)]
    if request.include_usage:
        events.append(usage_chunk(rid, model, created, nothing))
    return StreamingResponse(iter([*events, "data: [DONE]\n\n"]), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})


def as_refused(body: dict, config) -> ChatRequest:
    """What a refused request's help is answered as: streamed when it asked for a stream (stream: true exactly)."""
    options = body.get("stream_options")
    usage_too = isinstance(options, dict) and options.get("include_usage") is True
    return ChatRequest([], config.settings, stream=body.get("stream") is True, include_usage=usage_too)


def too_long(turn, request: ChatRequest, limit: int) -> RequestError:
    return RequestError(
        400, f"消息太长：只保留系统提示词和最后一条消息时提示仍有 {len(turn.ids)} 个 token，加上 max_tokens "
             f"{request.settings.max_new_tokens} 超过了模型的上下文长度 {limit} 个 token。请缩短消息或减小 max_tokens。",
        code="context_length_exceeded", param="messages")


# -- the app -----------------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self.reject(send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise RequestError(413, f"请求体超过 {self.limit} 字节", "request_too_large")
            return message

        try:
            await self.app(scope, counted, send)
        except RequestError:
            await self.reject(send)

    async def reject(self, send):
        body = json.dumps(error_body(f"请求体超过 {self.limit} 字节", "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def fail(err: RequestError, headers=None):
    from fastapi.responses import JSONResponse

    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def openai_errors(app) -> None:
    """Every error in OpenAI's shape, FastAPI's own 404/405/422/500 included: clients read error.message."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        text = {404: f"没有这个地址：{request.url.path}", 405: f"{request.url.path} 不支持 {request.method}"}
        return fail(RequestError(exc.status_code, text.get(exc.status_code, str(exc.detail)), kind), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        return fail(RequestError(422, f"请求不合法：{exc.errors()[:1]}"))

    @app.exception_handler(Exception)
    async def crashed(request, exc):
        return fail(RequestError(500, f"服务器内部错误：{type(exc).__name__}", "server_error"))


class Completions:
    """POST /v1/chat/completions: screen the raw body's user turn with the lexicon, parse, admit (or queue),
    prepare the turn, answer (whole or streamed). A crisis turn is never refused: busy, too long or failed, it gets the help
    (the lexicon's crisis turns before admission; the guard's, which needs the model, once admitted)."""

    def __init__(self, backend, safety, config: ServeConfig):
        self.backend, self.safety, self.config = backend, safety, config
        self.admission = Admission(config.max_concurrency, config.max_queue, config.queue_timeout)

    async def __call__(self, request):
        try:
            body = self.body(await request.body())
        except RequestError as err:
            return fail(err)
        # the lexicon first, on the raw body's last user message: before the fields are checked (a crisis turn in a
        # refused request still gets the help) and before admission (it waits first and is never refused); off the
        # event loop, so a long message never holds up other streams or /healthz
        seen = await asyncio.to_thread(words_only, self.safety, raw_user_turn(body))
        try:
            chat = self.read(body)
        except RequestError as err:
            if not seen.crisis:
                return fail(err)
            return unanswered(self.safety, self.config, seen, "bad_request", as_refused(body, self.config), err.message)
        if not seen.crisis and (err := await self.too_long_alone(chat)):
            return fail(err)  # before it queues: a 429 would tell it to retry a request that can never fit
        if seen.crisis and chat.stream and self.admission.must_wait():
            return self.help_while_waiting(chat, seen)
        refused = await self.admission.enter(urgent=seen.crisis)
        if refused:
            return unanswered(self.safety, self.config, seen, "busy", chat) if seen.crisis else self.busy(refused)
        started, stream = time.monotonic(), None
        try:
            turn = await self.turn_for(chat)
            if turn.overflow:
                if turn.crisis:
                    return unanswered(self.safety, self.config, turn.detection, "too_long", chat)
                return fail(too_long(turn, chat, self.backend.limit))
            stream = await self.answer(chat, turn, lambda: self.admission.leave(time.monotonic() - started))
            return stream
        except RequestError as err:
            return fail(err)
        finally:
            if stream is None or not chat.stream:  # a stream gives its place back when it ends (see held_stream)
                self.admission.leave(time.monotonic() - started)

    @staticmethod
    def body(raw: bytes) -> dict:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise RequestError(400, "请求体不是合法的 JSON") from None
        return body if isinstance(body, dict) else {}

    def read(self, body: dict) -> ChatRequest:
        config = self.config
        return parse_request(body, model=config.model_name, system=config.system, defaults=config.settings,
                             cap=config.max_tokens_cap)

    def help_while_waiting(self, chat: ChatRequest, seen: Detection):
        """A streamed crisis turn that must wait in the queue: its first event (the lexicon's safety object and the
        help block) goes out at once, the reply once a place is free (or, refused after all, the line saying why)."""
        held = {"since": None}

        def release():
            if held["since"] is not None:
                self.admission.leave(time.monotonic() - held["since"])

        return held_stream(self.waited_events(chat, seen, held), release)

    async def waited_events(self, chat: ChatRequest, seen: Detection, held: dict):
        safety, config = self.safety, self.config
        rid, created, model, turn = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), config.model_name, None
        lead = help_block(safety.notice(seen)) if config.help_in_content else ""
        yield chunk(rid, model, created, {"role": "assistant", "content": lead}, safety=safety.response_block(seen),
                    max_tokens=chat.settings.max_new_tokens)
        why = "busy" if await self.admission.enter(urgent=True) else None
        if why is None:
            held["since"] = time.monotonic()  # from here the place is this stream's: release() gives it back
            try:
                turn = await self.turn_for(chat)
                why = "too_long" if turn.overflow else None
            except Exception:  # a crisis turn's help is out: end as a reply, never as a broken stream
                why = "error"
        if why is None:
            async for event in stream_events(self.backend, safety, config, turn, chat, rid, created, led=True):
                yield event
            return
        nothing = usage(Outcome())
        yield chunk(rid, model, created, {"content": UNANSWERED[why]})
        yield chunk(rid, model, created, {}, finish="stop", safety=unanswered_block(safety, turn.detection if turn else seen, why))
        if chat.include_usage:
            yield usage_chunk(rid, model, created, nothing)
        yield "data: [DONE]\n\n"

    def busy(self, why: str):
        """429 with Retry-After: the queue is full, or the wait in it ran out."""
        config = self.config
        text = (f"服务繁忙：{config.max_concurrency} 个请求正在处理，排队的 {config.max_queue} 个位置也满了，请稍后重试"
                if why == "full" else f"服务繁忙：排队 {config.queue_timeout:g} 秒仍没有轮到，请稍后重试")
        return fail(RequestError(429, text, "rate_limit_exceeded", code="rate_limit_exceeded"),
                    headers={"Retry-After": str(self.admission.retry_after())})

    async def answer(self, chat: ChatRequest, turn, release):
        """The reply, streamed (its place given back by `release` when the stream ends) or whole."""
        from fastapi.responses import JSONResponse

        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if chat.stream:
            return held_stream(stream_events(self.backend, self.safety, self.config, turn, chat, rid, created), release)
        try:
            return JSONResponse(await complete(self.backend, self.safety, self.config, turn, chat, rid, created))
        except Exception as err:  # the engine failed: say so, never a traceback to the client (a crisis turn: the help)
            if turn.crisis:
                return unanswered(self.safety, self.config, turn.detection, "error", chat)
            return fail(RequestError(502, f"生成失败：{type(err).__name__}", "backend_error"))

    async def too_long_alone(self, chat: ChatRequest) -> RequestError | None:
        """The 400 for a turn that cannot fit even with its history dropped, found before admission (rendering
        only: no safety layer, no model); None when it fits or the backend does not say its context length."""
        tokenizer, limit = getattr(self.backend, "tokenizer", None), getattr(self.backend, "limit", None)
        if tokenizer is None or not limit:
            return None
        turn = await asyncio.to_thread(
            prepare_turn, chat.messages, safety=DisabledSafety(), history_turns=self.config.history_turns,
            tokenizer=tokenizer, max_new_tokens=chat.settings.max_new_tokens, limit=limit,
            enable_thinking=chat.settings.enable_thinking)
        return too_long(turn, chat, limit) if turn.overflow else None

    async def turn_for(self, chat: ChatRequest):
        """The request's turn: history window, crisis detection (both layers), context fitted (`overflow` when
        even its last message cannot fit: refused before any generation)."""
        # rendering and the guard model are blocking work: off the event loop, so other streams keep flowing
        return await asyncio.to_thread(
            prepare_turn, chat.messages, safety=self.safety, history_turns=self.config.history_turns,
            tokenizer=getattr(self.backend, "tokenizer", None), max_new_tokens=chat.settings.max_new_tokens,
            limit=getattr(self.backend, "limit", None), enable_thinking=chat.settings.enable_thinking)


def create_app(backend, safety, config: ServeConfig):
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, Response

    app = FastAPI(title="PsyDT-LoRA", docs_url=None, redoc_url=None, openapi_url=None)
    openai_errors(app)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if request.url.path.startswith("/v1/") and config.api_key:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), config.api_key.encode()):  # constant time
                return fail(RequestError(401, "API key 不正确（Authorization: Bearer <key>）", code="invalid_api_key"))
        return await call_next(request)

    completions = Completions(backend, safety, config)

    @app.get("/healthz")
    async def healthz():  # with the admission's counts: running, queued and their limits
        return {"status": "ok", **completions.admission.state()}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(render_page(config, safety))

    @app.get("/favicon.ico")
    @app.get("/favicon.svg")
    async def favicon():
        return Response(ICON.read_bytes(), media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    card = {"id": config.model_name, "object": "model", "created": 0, "owned_by": "psydt-lora"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name != config.model_name:
            return fail(RequestError(404, f"模型 {name!r} 不存在；本服务提供的模型是 {config.model_name!r}",
                                     code="model_not_found", param="model"))
        return card

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await completions(request)

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    return app


def held_stream(events, release):
    """A server-sent-event response that calls `release` once it is over, however it ends (finished,
    failed, or the client gone before the first byte)."""
    from fastapi.responses import StreamingResponse

    class HeldStream(StreamingResponse):
        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                release()

    return HeldStream(events, media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def render_page(config: ServeConfig, safety) -> str:
    """The chat page with what it shows read-only: model, system prompt, disclaimer, hotlines."""
    info = {"model": config.model_name, "system": config.system or "", "disclaimer": config.disclaimer,
            "resources": safety.resources, "needs_key": bool(config.api_key),
            "max_tokens": config.settings.max_new_tokens, "help_open": HELP_OPEN, "help_close": HELP_CLOSE}
    blob = html.escape(json.dumps(info, ensure_ascii=False), quote=False)
    return PAGE.read_text("utf-8").replace("__PSYDT_INFO__", blob)


def quiet_cancel(record) -> bool:
    """A request cancelled because the server is quitting (a second Ctrl-C) is not an error worth a traceback."""
    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


def serve(app, host: str, port: int, announce=print) -> None:
    """Run until SIGINT/SIGTERM; in-flight streams are allowed to finish (up to 30 s; a second Ctrl-C quits
    at once). The socket is bound first and `announce(port)` told the port it got, so `--port 0` takes a
    free one and says which. The signal that stopped the server is raised again once its loop is closed:
    SIGTERM's default action ends the process, Ctrl-C comes out of here as KeyboardInterrupt (the program
    ends on it with status INTERRUPTED)."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but the signals it caught are raised again after its loop, not inside it (where a
        second Ctrl-C cancelled the app's tasks with tracebacks), and the app's shutdown runs after a forced
        quit too (uvicorn skips it, leaving a cancelled lifespan task to print one)."""
        caught: list = []

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                try:
                    yield
                finally:
                    self.caught, self._captured_signals = list(self._captured_signals), []

        async def shutdown(self, sockets=None):
            await super().shutdown(sockets=sockets)
            if self.force_exit:
                await self.lifespan.shutdown()

    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
    logging.getLogger("uvicorn.error").addFilter(quiet_cancel)
    sock = config.bind_socket()
    announce(sock.getsockname()[1])
    server = Server(config)
    server.run(sockets=[sock])
    for sig in reversed(server.caught):
        signal.raise_signal(sig)
