"""The OpenAI chat-completions wire format as this server speaks it: reading a request (with the
server's limits applied), the error object, response chunks, and the crisis help block that leads a
reply's content.

Clients differ in what they keep of a response: LangChain's `ChatOpenAI` drops every field outside
OpenAI's schema (so the `safety` object never reaches an app built on it), many front ends render only
`content`. On a crisis turn the help therefore also travels at the start of the content, fenced as
HELP_OPEN ... HELP_CLOSE so a page can render it apart; incoming history has it removed again so the
model never sees it as something "it" said.

A request field the server cannot honour (tools, a JSON response format, logprobs, penalties, an unknown
field) is refused with a 400 naming it, rather than silently ignored; the fields clients send with a value
that asks for nothing (`"tools": []`, `"logprobs": false`, `"user": ...`) are accepted.
"""
import json
from dataclasses import dataclass, field, replace

from psydt_lora.inference.generation import GenerationSettings

HELP_OPEN = "```psydt-help\n"
HELP_CLOSE = "\n```\n\n"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}  # developer: OpenAI's newer name
# the fields read below; chat_template_kwargs is vLLM's (this project's gateway and judge send enable_thinking in it)
HONOURED = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stream",
            "stream_options", "stop", "n", "chat_template_kwargs"}
# nothing to do for them here (no account, no billing, no tools to run in parallel): accepted and ignored
IGNORED = {"user", "metadata", "service_tier", "safety_identifier", "prompt_cache_key", "parallel_tool_calls"}
# accepted only with a value that asks for nothing; any other value is refused with what cannot be done
NEUTRAL = {
    "tools": ((None, []), "不能调用工具（tools）"),
    "functions": ((None, []), "不能调用工具（functions）"),
    "tool_choice": ((None, "none", "auto"), "不能调用工具（tool_choice）"),
    "function_call": ((None, "none", "auto"), "不能调用工具（function_call）"),
    "response_format": ((None, {"type": "text"}), "不能保证输出格式：只支持 {\"type\": \"text\"}（response_format）"),
    "logprobs": ((None, False), "不返回 logprobs"),
    "top_logprobs": ((None, 0), "不返回 logprobs（top_logprobs）"),
    "logit_bias": ((None, {}), "不支持 logit_bias"),
    "frequency_penalty": ((None, 0), "不支持 frequency_penalty（只能是 0）"),
    "presence_penalty": ((None, 0), "不支持 presence_penalty（只能是 0）"),
    "modalities": ((None, ["text"]), "只输出文字（modalities 只能是 [\"text\"]）"),
    "audio": ((None,), "不输出语音（audio）"),
    "prediction": ((None,), "不支持 prediction"),
    "reasoning_effort": ((None,), "不支持 reasoning_effort（思考模式由服务端的设置决定）"),
    "web_search_options": ((None,), "不能联网搜索（web_search_options）"),
    "store": ((None, False), "不保存任何对话（store 只能是 false）"),
}
# a crisis turn the server cannot answer still gets the help (see Completions): the line after the help block
UNANSWERED = {
    "busy": "（咨询师现在忙不过来，暂时没法回复这条消息。请先联系上面的求助热线或身边信任的人，稍后再发一次。）",
    "too_long": "（这条消息太长，咨询师没法回复。请先联系上面的求助热线或身边信任的人，把话分成几条短一些的消息再发。）",
    "error": "（生成回复时出错了，咨询师暂时没法回复。请先联系上面的求助热线或身边信任的人，稍后再发一次。）",
    # {detail}: what the server refused in the request (the error message a calm turn gets with its 4xx)
    "bad_request": "（这条请求本服务没法照办，咨询师暂时没法回复。请先联系上面的求助热线或身边信任的人。请求的问题：{detail}）",
}


class RequestError(Exception):
    """A request answered with an OpenAI error object; `code` and `param` as OpenAI fills them."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code=None, param=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.code, self.param)


def error_body(message: str, kind: str, code=None, param=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class ChatRequest:
    messages: list[dict]
    settings: GenerationSettings  # max_new_tokens is the effective max_tokens (clamped to the server's cap)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    stop: list = field(default_factory=list)


def help_block(notice: str) -> str:
    return f"{HELP_OPEN}{notice}{HELP_CLOSE}"


def without_help(content: str) -> str:
    """An assistant message as the model wrote it: a leading help block (ours, sent back by the client) removed."""
    if content.startswith(HELP_OPEN):
        end = content.find(HELP_CLOSE, len(HELP_OPEN))
        if end >= 0:
            return content[end + len(HELP_CLOSE):]
    return content


def message_text(i: int, content) -> str:
    """A message's content as text: a string, or a list of text parts (what LangChain sends for content lists)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(400, f"messages[{i}].content 必须是字符串或内容片段列表", param=f"messages[{i}].content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise RequestError(400, f"messages[{i}].content[{j}] 的类型 {kind!r} 不支持：这个模型只接受文字（type \"text\"）",
                               param=f"messages[{i}].content[{j}]")
        texts.append(part["text"])
    return "".join(texts)


def read_messages(raw, system: str | None) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "messages 必须是非空列表", param="messages")
    clean = []
    for i, m in enumerate(raw):
        role = ROLES.get(m.get("role")) if isinstance(m, dict) and isinstance(m.get("role"), str) else None
        if role is None:
            raise RequestError(400, f"messages[{i}] 需要 role（system/user/assistant）和 content", param=f"messages[{i}]")
        text = message_text(i, m.get("content"))
        clean.append({"role": role, "content": without_help(text) if role == "assistant" else text})
    if clean[-1]["role"] != "user":
        raise RequestError(400, "最后一条消息必须是 user", param="messages")
    if system and clean[0]["role"] != "system":
        clean.insert(0, {"role": "system", "content": system})
    return clean


def read_max_tokens(body: dict, default: int, cap: int) -> int:
    """The request's max_tokens, clamped to the server's cap (so a client's generous default still works)."""
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise RequestError(400, f"max_tokens 必须是正整数，收到 {value!r}", param="max_tokens")
    return min(value, cap)


def read_stop(value) -> list[str]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise RequestError(400, "stop 必须是字符串或最多 4 个字符串的列表", param="stop")
    return [s for s in stops if s]


def asks_nothing(value, neutral) -> bool:
    """`value` is `neutral` (False is not 0, 0.0 is 0)."""
    if neutral is None or isinstance(neutral, bool):
        return value is neutral
    if isinstance(neutral, int):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == neutral
    return value == neutral


def check_fields(body: dict) -> None:
    """RequestError naming the first field this server cannot honour (see HONOURED, IGNORED, NEUTRAL)."""
    for name, value in body.items():
        if name in HONOURED or name in IGNORED:
            continue
        if name not in NEUTRAL:
            raise RequestError(400, f"不支持请求参数 {name}：本服务不能按它生成，请去掉它。支持的参数："
                                    f"{'、'.join(sorted(HONOURED))}", code="unsupported_parameter", param=name)
        accepted, why = NEUTRAL[name]
        if not any(asks_nothing(value, ok) for ok in accepted):
            raise RequestError(400, f"{name} 不支持：本服务{why}，收到 {json.dumps(value, ensure_ascii=False)[:80]}",
                               code="unsupported_parameter", param=name)


def read_thinking(body: dict, default: bool) -> bool:
    """vLLM's `chat_template_kwargs` as this server honours it: only `enable_thinking`."""
    kwargs = body.get("chat_template_kwargs")
    if kwargs is None:
        return default
    if not isinstance(kwargs, dict) or set(kwargs) - {"enable_thinking"} or \
            not isinstance(kwargs.get("enable_thinking", default), bool):
        raise RequestError(400, "chat_template_kwargs 只支持 {\"enable_thinking\": true/false}", code="unsupported_parameter",
                           param="chat_template_kwargs")
    return kwargs.get("enable_thinking", default)


def parse_request(body: dict, *, model: str, system: str | None, defaults: GenerationSettings, cap: int) -> ChatRequest:
    """A ChatRequest from an OpenAI chat request, or RequestError."""
    check_fields(body)
    if body.get("model") not in (None, model):  # no model given: the one served (documented in the README)
        raise RequestError(404, f"模型 {body['model']!r} 不存在；本服务提供的模型是 {model!r}", code="model_not_found",
                           param="model")
    if body.get("n") not in (None, 1):
        raise RequestError(400, f"n 只支持 1（一次一条回复），收到 {body['n']!r}", param="n")
    messages = read_messages(body.get("messages"), system)
    temperature, top_p = body.get("temperature"), body.get("top_p")
    for name, value, top in (("temperature", temperature, 2.0), ("top_p", top_p, 1.0)):
        if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= top):
            raise RequestError(400, f"{name} 必须在 0 到 {top} 之间", param=name)
    do_sample = defaults.do_sample if temperature is None else temperature > 0
    settings = replace(defaults, max_new_tokens=read_max_tokens(body, defaults.max_new_tokens, cap), do_sample=do_sample,
                       temperature=defaults.temperature if not temperature else float(temperature),
                       top_p=defaults.top_p if top_p is None else float(top_p),
                       enable_thinking=read_thinking(body, defaults.enable_thinking))
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestError(400, "seed 必须是整数", param="seed")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "stream_options 必须是对象，例如 {\"include_usage\": true}", param="stream_options")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError(400, f"stream 必须是 true 或 false，收到 {json.dumps(stream, ensure_ascii=False)[:40]}", param="stream")
    return ChatRequest(messages, settings, seed, bool(stream), bool(options.get("include_usage")), read_stop(body.get("stop")))


def chunk(rid: str, model: str, created: int, delta: dict, finish=None, **extra) -> str:
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def usage_chunk(rid: str, model: str, created: int, usage: dict) -> str:
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage}
    return f"data: {json.dumps(body)}\n\n"


def error_event(message: str, kind: str) -> str:
    return f"data: {json.dumps(error_body(message, kind), ensure_ascii=False)}\n\ndata: [DONE]\n\n"


class StopCut:
    """Ends a streamed reply at the first `stop` string (not included), holding back only what could be
    the start of one."""

    def __init__(self, stops: list[str]):
        self.stops, self.pending, self.hit = stops, "", False

    def feed(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.pending += piece
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending, self.hit = self.pending[:min(found)], "", True
            return out
        keep = max((k for s in self.stops for k in range(len(s) - 1, 0, -1) if self.pending.endswith(s[:k])), default=0)
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
