"""Generating replies: settings, batched greedy/sampled generation, and streaming one reply."""
import threading
from dataclasses import asdict, dataclass
from typing import NamedTuple

from psydt_lora.data.packing import pad, padding_mask
from psydt_lora.models import DEFAULT_CONTEXT
from psydt_lora.prompt import end_of_turn_id, fit_history, strip_think


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 512
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.8
    repetition_penalty: float = 1.05
    enable_thinking: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return describe_generation(self.as_dict())

    def kwargs(self, tokenizer, model) -> dict:
        kw = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
            "eos_token_id": stop_ids(tokenizer, model),
            "pad_token_id": tokenizer.pad_token_id,
        }
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p)
        else:  # greedy: unset the sampling knobs a model's generation_config may carry
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw


def describe_generation(settings: dict) -> str:
    """Generation settings as a reader wants them: the sampling knobs only when sampling is on."""
    if settings.get("do_sample"):
        how = f"采样（temperature {settings.get('temperature')}，top_p {settings.get('top_p')}）"
    else:
        how = "贪心解码（greedy）"
    think = "开" if settings.get("enable_thinking") else "关"
    return (f"{how}，max_new_tokens {settings.get('max_new_tokens')}，"
            f"repetition_penalty {settings.get('repetition_penalty')}，思考模式 {think}")


def stop_ids(tokenizer, model) -> list[int]:
    """Generation stops at the end-of-turn token (<|im_end|>) and the model's own eos tokens."""
    ids = [end_of_turn_id(tokenizer)]
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for e in eos if isinstance(eos, list) else [eos]:
        if e is not None and e not in ids:
            ids.append(e)
    return ids


def context_limit(model, override: int | None = None) -> int:
    if override:
        return override
    return int(getattr(model.config, "max_position_embeddings", 0) or DEFAULT_CONTEXT)


def prepare_context(tokenizer, messages, max_new_tokens: int, limit: int, enable_thinking=False):
    """Context ids that leave room for `max_new_tokens` within the model's context: the oldest rounds
    are dropped (the system prompt stays). Returns (ids, dropped_rounds)."""
    return fit_history(tokenizer, messages, limit - max_new_tokens, enable_thinking)


def generate_batch(model, tokenizer, contexts: list[list[int]], settings: GenerationSettings):
    """Generate one reply per context, batched with left padding. Returns (texts, new_token_counts)."""
    import torch

    width = max(len(c) for c in contexts)
    input_ids = pad(contexts, tokenizer.pad_token_id, width, left=True)
    attention = padding_mask(contexts, width, left=True)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                             **settings.kwargs(tokenizer, model))
    stops = set(stop_ids(tokenizer, model))
    texts, counts = [], []
    for row in out[:, width:].tolist():
        n = next((i for i, t in enumerate(row) if t in stops), len(row))
        counts.append(n)
        texts.append(strip_think(tokenizer.decode(row[:n], skip_special_tokens=True)))
    return texts, counts


class ThinkFilter:
    """Hides `<think>...</think>` from a stream of text pieces (tags may be split across pieces)."""

    def __init__(self):
        self.buffer = ""
        self.inside = False
        self.after_block = False  # newlines right after </think> are not shown

    def feed(self, piece: str) -> str:
        self.buffer += piece
        shown = []
        if self.after_block:
            self.buffer = self.buffer.lstrip("\n")
            self.after_block = not self.buffer
        while True:
            tag = "</think>" if self.inside else "<think>"
            pos = self.buffer.find(tag)
            if pos >= 0:
                if not self.inside:
                    shown.append(self.buffer[:pos])
                self.buffer = self.buffer[pos + len(tag):]
                self.inside = not self.inside
                if not self.inside:
                    self.buffer = self.buffer.lstrip("\n")
                    self.after_block = not self.buffer
                continue
            # keep a possible partial tag at the end for the next piece
            keep = next((k for k in range(len(tag) - 1, 0, -1) if self.buffer.endswith(tag[:k])), 0)
            if not self.inside:
                shown.append(self.buffer[: len(self.buffer) - keep])
            self.buffer = self.buffer[len(self.buffer) - keep:]
            return "".join(shown)

    def flush(self) -> str:
        rest, self.buffer = ("" if self.inside else self.buffer), ""
        return rest


class Streamed(NamedTuple):
    text: str  # the reply without think blocks
    interrupted: bool
    hit_limit: bool  # stopped at max_new_tokens
    tokens: int = 0  # tokens generated (the end-of-turn token included when the model wrote it)


def stream_reply(model, tokenizer, context: list[int], settings: GenerationSettings, on_text, stop_event) -> Streamed:
    """Generate one reply in a background thread, calling `on_text(piece)` for each visible piece.
    Setting `stop_event` (or Ctrl-C here) ends generation early."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class StopOnEvent(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            return stop_event.is_set()

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=None)
    device = next(model.parameters()).device
    ids = torch.tensor([context], device=device)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                  stopping_criteria=StoppingCriteriaList([StopOnEvent()]), **settings.kwargs(tokenizer, model))
    errors, generated = [], []

    def work():
        try:
            with torch.no_grad():
                generated.append(model.generate(**kwargs)[0, len(context):].tolist())
        except BaseException as err:  # surfaced in the caller's thread
            errors.append(err)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    raw, interrupted = _relay(streamer, on_text, stop_event)
    thread.join()
    if errors:
        raise errors[0]
    new = generated[0] if generated else []
    hit_limit = len(new) >= settings.max_new_tokens and new[-1] not in stop_ids(tokenizer, model)
    return Streamed(strip_think(raw), interrupted or stop_event.is_set(), hit_limit, len(new))


def _relay(streamer, on_text, stop_event) -> tuple[str, bool]:
    """Pass the streamer's pieces to `on_text` with think blocks hidden; Ctrl-C stops generation.
    Returns (everything streamed, interrupted)."""
    filt = ThinkFilter()
    raw = []
    interrupted = False
    pieces = iter(streamer)
    while True:
        try:
            piece = next(pieces)
        except StopIteration:
            break
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the program
            interrupted = True
            stop_event.set()
            continue
        if not piece or interrupted:  # the streamer yields empty strings while it waits for a word boundary
            continue
        raw.append(piece)
        visible = filt.feed(piece)
        if visible:
            on_text(visible)
    if not interrupted:
        tail = filt.flush()
        if tail:
            on_text(tail)
    return "".join(raw), interrupted
