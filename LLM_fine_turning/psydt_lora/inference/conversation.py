"""One turn of a conversation, as every front end prepares it (terminal chat, HTTP server):
the history window, crisis detection on the user's turn, the per-turn safety instruction, and the
context fitted to the model's window. The front ends differ only in how they show the reply."""
from dataclasses import dataclass

from psydt_lora.inference.generation import prepare_context
from psydt_lora.prompt import round_starts


def window(messages: list[dict], history_turns: int) -> list[dict]:
    """The system prompt (if any), the last `history_turns` earlier rounds, and the final user turn."""
    has_sys = bool(messages) and messages[0]["role"] == "system"
    head, body = messages[:1] if has_sys else [], messages[1:] if has_sys else list(messages)
    if not body:
        return list(messages)
    starts = round_starts(body)
    last = starts[-1]
    earlier = starts[:-1][-history_turns:] if history_turns > 0 else []
    first = earlier[0] if earlier else last
    return head + body[first:]


def drop_rounds(messages: list[dict], dropped: int) -> list[dict]:
    """`messages` without their `dropped` oldest rounds (the system prompt stays)."""
    if not dropped:
        return list(messages)
    has_sys = bool(messages) and messages[0]["role"] == "system"
    starts = round_starts(messages)
    return (messages[:1] if has_sys else []) + messages[starts[dropped]:]


@dataclass
class Turn:
    messages: list[dict]  # what the model is asked to answer: windowed, fitted, with the safety instruction
    detection: object  # safety.Detection of the user's turn (never a crisis with the safety layer off)
    ids: list[int] | None  # the rendered context (None when only messages are needed, e.g. a remote engine)
    dropped: int  # oldest rounds left out to fit the context
    budget: int | None = None  # context tokens left for the prompt once the reply's max_new_tokens is reserved

    @property
    def crisis(self) -> bool:
        return self.detection.crisis

    @property
    def overflow(self) -> bool:
        """Even the system prompt and the last user turn alone do not leave room for the reply."""
        return self.ids is not None and self.budget is not None and len(self.ids) > self.budget


def prepare_turn(messages, *, safety, history_turns: int, tokenizer, max_new_tokens: int, limit: int | None,
                 enable_thinking: bool = False) -> Turn:
    """`messages` ends with the user's turn. With no tokenizer (or no limit) the context is not rendered."""
    msgs = window(messages, history_turns)
    detection = safety.check_turn(msgs)
    guidance = safety.guidance(detection)  # a crisis turn's steer toward safety, or a resolved past's check-in
    if guidance:
        msgs = safety.with_guidance(msgs, guidance)
    ids, dropped = None, 0
    if tokenizer is not None and limit:
        ids, dropped = prepare_context(tokenizer, msgs, max_new_tokens, limit, enable_thinking)
        msgs = drop_rounds(msgs, dropped)
    return Turn(msgs, detection, ids, dropped, limit - max_new_tokens if limit else None)


def reply_screen(safety, turn: Turn):
    """The screen a reply to `turn` streams through (held whole on a crisis turn; passing everything through
    with the safety layer off) -- the one place the front ends ask the safety wing for it."""
    return safety.screen(turn.crisis, turn.messages[-1]["content"])
