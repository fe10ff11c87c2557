"""The counsellor over HTTP: an OpenAI-compatible chat API (FastAPI + uvicorn) with the safety layer in
front of the model, and a small chat page at `/`.

Backends: `hf` generates in this process (one reply at a time on the model, at most `max_concurrency`
requests admitted, the rest answered 429); `openai` forwards generation to any OpenAI-compatible engine
(vLLM, SGLang, another instance of this server) while this process stays the safety gateway.

Every request goes through `conversation.prepare_turn` -- the same history window, crisis detection,
safety instruction and context fitting as the terminal chat -- and its reply through `ReplyScreen`.
The response carries a `safety` object (documented in the README); a stream sends it in its first event,
before any reply text. Request text is never logged; nothing is stored on the server.
"""
import asyncio
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from psydt_lora.inference.conversation import prepare_turn
from psydt_lora.inference.generation import GenerationSettings, stream_reply

PAGE = Path(__file__).with_name("web") / "chat.html"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


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


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error_body(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": None}}


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
        self.lock = lock or threading.Lock()  # shared with a guard that uses this same model (--safety_model base)

    async def stream(self, turn, settings: GenerationSettings, seed, outcome: Outcome):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def work():
            from transformers import set_seed

            try:
                with self.lock:
                    if seed is not None:
                        set_seed(seed)
                    text, _, hit = stream_reply(self.model, self.tokenizer, turn.ids, settings,
                                                lambda piece: loop.call_soon_threadsafe(queue.put_nowait, piece), stop)
                outcome.prompt_tokens = len(turn.ids)
                outcome.completion_tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                outcome.finish_reason = "length" if hit else "stop"
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
            stop.set()  # the client went away: stop generating
            await worker


class OpenAIBackend:
    """Generation by a remote OpenAI-compatible engine; thinking is switched off the way Qwen3's
    template expects (`chat_template_kwargs`)."""

    def __init__(self, url: str, model: str, api_key: str | None, tokenizer=None, context_limit: int | None = None):
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(base_url=url, api_key=api_key or "none", max_retries=0)
        self.model, self.tokenizer, self.limit = model, tokenizer, context_limit

    async def stream(self, turn, settings: GenerationSettings, seed, outcome: Outcome):
        kwargs = {"temperature": settings.temperature if settings.do_sample else 0.0, "max_tokens": settings.max_new_tokens}
        if settings.do_sample:
            kwargs["top_p"] = settings.top_p
        if seed is not None:
            kwargs["seed"] = seed
        stream = await self.client.chat.completions.create(
            model=self.model, messages=turn.messages, stream=True, stream_options={"include_usage": True},
            extra_body={"chat_template_kwargs": {"enable_thinking": settings.enable_thinking}}, **kwargs)
        async for chunk in stream:
            if chunk.usage is not None:
                outcome.prompt_tokens = chunk.usage.prompt_tokens
                outcome.completion_tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.finish_reason:
                    outcome.finish_reason = choice.finish_reason
                if choice.delta and choice.delta.content:
                    yield choice.delta.content


# -- one request ---------------------------------------------------------------------------------------
def parse_request(body: dict, config: ServeConfig) -> tuple[list[dict], GenerationSettings, int | None, bool, bool]:
    """(messages, settings, seed, stream, include_usage) from an OpenAI chat request, or RequestError(400)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages 必须是非空列表")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise RequestError(400, f"messages[{i}] 需要 role（system/user/assistant）和字符串 content")
        clean.append({"role": m["role"], "content": m["content"]})
    if clean[-1]["role"] != "user":
        raise RequestError(400, "最后一条消息必须是 user")
    if config.system and clean[0]["role"] != "system":
        clean.insert(0, {"role": "system", "content": config.system})
    s = config.settings
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or s.max_new_tokens
    if not isinstance(max_tokens, int) or not 0 < max_tokens <= config.max_tokens_cap:
        raise RequestError(400, f"max_tokens 必须是 1 到 {config.max_tokens_cap} 之间的整数")
    temperature, top_p = body.get("temperature"), body.get("top_p")
    for name, value, top in (("temperature", temperature, 2.0), ("top_p", top_p, 1.0)):
        if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= top):
            raise RequestError(400, f"{name} 必须在 0 到 {top} 之间")
    do_sample = s.do_sample if temperature is None else temperature > 0
    settings = replace(s, max_new_tokens=max_tokens, do_sample=do_sample,
                       temperature=s.temperature if not temperature else float(temperature),
                       top_p=s.top_p if top_p is None else float(top_p))
    seed = body.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise RequestError(400, "seed 必须是整数")
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return clean, settings, seed, bool(body.get("stream")), usage


def safety_block(safety, turn, screened: bool = False) -> dict:
    """The `safety` object of a response: whether the user's turn shows a crisis (with the help resources
    and a notice to show before the reply) and whether the reply was screened and replaced."""
    if safety is None:
        return {"enabled": False}
    block = {"enabled": True, **turn.detection.as_dict(), "screened": screened}
    if turn.crisis:
        block["notice"] = safety.notice(turn.detection)
        block["resources"] = safety.resources["resources"]
    return block


class Reply:
    """One reply on its way out: screened as it streams (held whole on a crisis turn, as in the chat)."""

    def __init__(self, safety, turn):
        self.safety = safety
        self.screen = safety.screen(turn.crisis, turn.messages[-1]["content"]) if safety is not None else None

    def feed(self, piece: str) -> str:
        return piece if self.screen is None else self.screen.feed(piece)

    def finish(self) -> tuple[str, bool]:
        """(the rest to send, screened). A screened reply ends with the safe reply instead."""
        if self.screen is None:
            return "", False
        rest, blocked = self.screen.finish(self.screen.text)  # the screen keeps the whole raw reply
        if blocked:
            return ("\n" if self.screen.shown else "") + self.safety.safe_reply(), True
        return rest, False


def chunk(rid: str, model: str, created: int, delta: dict, finish=None, **extra) -> str:
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def usage(outcome: Outcome) -> dict:
    return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}


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
                raise RequestError(413, f"请求体超过 {self.limit} 字节")
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


def create_app(backend, safety, config: ServeConfig):
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

    app = FastAPI(title="PsyDT-LoRA", docs_url=None, redoc_url=None, openapi_url=None)
    admitted = {"n": 0}

    def fail(status: int, message: str, kind: str):
        return JSONResponse(error_body(message, kind), status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/v1/") and config.api_key:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), config.api_key.encode()):  # constant time
                return fail(401, "API key 不正确（Authorization: Bearer <key>）", "invalid_api_key")
        return await call_next(request)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(render_page(config, safety))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0, "owned_by": "psydt-lora"}]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return fail(400, "请求体不是合法的 JSON", "invalid_request_error")
        try:
            messages, settings, seed, stream, include_usage = parse_request(body if isinstance(body, dict) else {}, config)
        except RequestError as err:
            return fail(err.status, err.message, err.kind)
        if admitted["n"] >= config.max_concurrency:
            return JSONResponse(error_body(f"服务繁忙：已有 {config.max_concurrency} 个请求在处理，请稍后重试", "rate_limit_exceeded"),
                                status_code=429, headers={"Retry-After": "1"})
        # rendering and the guard model are blocking work: off the event loop, so other streams keep flowing
        turn = await asyncio.to_thread(
            prepare_turn, messages, safety=safety, history_turns=config.history_turns,
            tokenizer=getattr(backend, "tokenizer", None), max_new_tokens=settings.max_new_tokens,
            limit=getattr(backend, "limit", None), enable_thinking=settings.enable_thinking)
        admitted["n"] += 1  # released when the reply (or its stream) ends
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if stream:
            events = stream_events(backend, safety, config, turn, settings, seed, include_usage, rid, created)
            return StreamingResponse(released(events, admitted), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store"})
        try:
            return JSONResponse(await complete(backend, safety, config, turn, settings, seed, rid, created))
        except Exception as err:  # the engine failed: say so, never a traceback to the client
            return fail(502, f"生成失败：{type(err).__name__}", "backend_error")
        finally:
            admitted["n"] -= 1

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    return app


async def released(events, admitted):
    try:
        async for event in events:
            yield event
    finally:
        admitted["n"] -= 1


async def stream_events(backend, safety, config, turn, settings, seed, include_usage, rid, created):
    """Server-sent events in OpenAI's chunk schema; the first carries `safety` (resources before the reply)."""
    model = config.model_name
    yield chunk(rid, model, created, {"role": "assistant", "content": ""}, safety=safety_block(safety, turn))
    reply, outcome = Reply(safety, turn), Outcome()
    try:
        async for piece in backend.stream(turn, settings, seed, outcome):
            shown = reply.feed(piece)
            if shown:
                yield chunk(rid, model, created, {"content": shown})
    except Exception as err:
        yield f"data: {json.dumps(error_body(f'生成失败：{type(err).__name__}', 'backend_error'))}\n\n"
        yield "data: [DONE]\n\n"
        return
    rest, screened = await asyncio.to_thread(reply.finish)  # the guard screens the whole reply
    if rest:
        yield chunk(rid, model, created, {"content": rest})
    yield chunk(rid, model, created, {}, finish=outcome.finish_reason, safety=safety_block(safety, turn, screened))
    if include_usage:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                "usage": usage(outcome)}
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


async def complete(backend, safety, config, turn, settings, seed, rid, created) -> dict:
    reply, outcome = Reply(safety, turn), Outcome()
    shown = []
    async for piece in backend.stream(turn, settings, seed, outcome):
        shown.append(reply.feed(piece))
    rest, screened = await asyncio.to_thread(reply.finish)  # the guard screens the whole reply
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": config.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(shown) + rest},
                     "finish_reason": outcome.finish_reason}],
        "usage": usage(outcome),
        "safety": safety_block(safety, turn, screened),
    }


def render_page(config: ServeConfig, safety) -> str:
    """The chat page with what it shows read-only: model, system prompt, disclaimer, hotlines."""
    import html

    info = {"model": config.model_name, "system": config.system or "", "disclaimer": config.disclaimer,
            "resources": safety.resources if safety is not None else None, "needs_key": bool(config.api_key),
            "max_tokens": config.settings.max_new_tokens}
    blob = html.escape(json.dumps(info, ensure_ascii=False), quote=False)
    return PAGE.read_text("utf-8").replace("__PSYDT_INFO__", blob)


def serve(app, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM; in-flight streams are allowed to finish (up to 30 s)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)).run()
