"""Dialogues -> training samples: one sample per assistant reply, loss on the reply only.

For reply k the sample is

    input_ids = ids(render_prompt(history before reply k)) + ids(reply k) + [<|im_end|>]
    labels    = -100 ...................................... + ids(reply k) + [<|im_end|>]

i.e. exactly the context inference renders, followed by what the model should say.

Speed: rendering and tokenising every prefix from scratch is quadratic in the dialogue length.
Instead each dialogue is rendered and tokenised once (the context of its last reply); the context of
an earlier reply is a prefix of it, cut where that reply's turn starts, plus the generation prompt.
This relies on the chat template rendering history the same way whatever follows, which holds for
Qwen3 when the history ends with a user turn. It is checked against exact rendering on the first
dialogues of every run (and on every turn of real data in the tests); a reply whose history does not
end with a user turn, or that must be truncated, is always built the exact way.

Truncation (context + reply > max_length): keep the system prompt and the whole reply, drop the
oldest whole rounds (a round starts at a user turn) -- the most recent round always stays; if even
that does not fit, the reply's end is cut; if the context alone does not fit, the sample is dropped.
"""
import json
from dataclasses import asdict, dataclass, field

from .prompt import encode, end_of_turn_id, fit_history, generation_prompt, prompt_ids, render, round_starts

IGNORE_INDEX = -100
SELF_CHECK_DIALOGUES = 3
CHUNK = 256  # dialogues rendered and tokenised per batch


@dataclass
class Sample:
    dialogue_index: int  # record index in the data file
    turn_index: int  # 0-based index of this reply among the dialogue's trained replies
    message_index: int  # index of the reply in the dialogue's messages
    input_ids: list[int]
    labels: list[int]


@dataclass
class SampleStats:
    dialogues: int = 0
    samples: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    max_sample_tokens: int = 0
    truncated_history_samples: int = 0
    dropped_rounds: int = 0
    truncated_reply_samples: int = 0
    dropped_too_long_samples: int = 0
    exact_path_samples: int = 0
    fast_path_disabled: bool = False
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mean_sample_tokens"] = round(self.tokens / self.samples, 1) if self.samples else 0
        return d


class _Builder:
    def __init__(self, tokenizer, max_length: int, enable_thinking: bool):
        self.tok = tokenizer
        self.max_length = max_length
        self.enable_thinking = enable_thinking
        self.gen_ids = encode(tokenizer, generation_prompt(tokenizer, enable_thinking))
        self.turn_start = self.gen_ids[0]
        self.eot = end_of_turn_id(tokenizer)
        self.stats = SampleStats()
        self.fast_ok = True

    # -- exact path -------------------------------------------------------------------------------
    def exact_context(self, messages, a: int, reply_len: int, first_round: int = 0):
        """Context ids for the reply at message `a`, rendered exactly, truncated by whole rounds.
        Returns (ids, dropped_rounds, reply_room) or None when even the last round does not fit."""
        ids, _, dropped = fit_history(self.tok, messages[:a], self.max_length - reply_len, self.enable_thinking, first_round)
        room = min(reply_len, self.max_length - len(ids))
        return None if room <= 0 else (ids, dropped, room)

    # -- one dialogue -----------------------------------------------------------------------------
    def dialogue_samples(self, d, targets, ctx_ids, reply_ids, check: bool):
        msgs = d.messages
        starts = [i for i, t in enumerate(ctx_ids) if t == self.turn_start] if ctx_ids is not None else []
        fast = (
            self.fast_ok
            and ctx_ids is not None
            and len(starts) == targets[-1] + 1
            and ctx_ids[-len(self.gen_ids):] == self.gen_ids
        )
        has_sys = msgs[0]["role"] == "system"
        out = []
        for turn, (a, reply) in enumerate(zip(targets, reply_ids)):
            context, dropped, room = None, 0, len(reply)
            if fast and msgs[a - 1]["role"] == "user":
                context = ctx_ids[: starts[a]] + self.gen_ids
                if check:
                    exact = prompt_ids(self.tok, msgs[:a], self.enable_thinking)
                    if exact != context:
                        self.fast_ok = fast = False
                        self.stats.fast_path_disabled = True
                        self.stats.notes.append(
                            f"chat template renders history differently by prefix (record {d.index}); "
                            "using exact per-reply rendering for the whole run"
                        )
                        context = None
                if context is not None and len(context) + len(reply) > self.max_length:
                    # Skip the rounds the token spans already show to be too long, then render exactly.
                    sys_len = starts[1] if has_sys else 0
                    rounds = round_starts(msgs[:a])
                    first = len(rounds) - 1
                    for r, i in enumerate(rounds):
                        if sys_len + starts[a] - starts[i] + len(self.gen_ids) + len(reply) <= self.max_length:
                            first = r
                            break
                    context = None
                    result = self.exact_context(msgs, a, len(reply), first_round=first)
                    self.stats.exact_path_samples += 1
                    if result is None:
                        self.stats.dropped_too_long_samples += 1
                        continue
                    context, dropped, room = result
            if context is None:
                self.stats.exact_path_samples += 1
                result = self.exact_context(msgs, a, len(reply))
                if result is None:
                    self.stats.dropped_too_long_samples += 1
                    continue
                context, dropped, room = result
            if dropped:
                self.stats.truncated_history_samples += 1
                self.stats.dropped_rounds += dropped
            if room < len(reply):
                self.stats.truncated_reply_samples += 1
                reply = reply[:room]
            ids = context + reply
            labels = [IGNORE_INDEX] * len(context) + reply
            out.append(Sample(d.index, turn, a, ids, labels))
        return out

    def add(self, sample: Sample):
        s = self.stats
        s.samples += 1
        s.tokens += len(sample.input_ids)
        s.supervised_tokens += sum(1 for x in sample.labels if x != IGNORE_INDEX)
        s.max_sample_tokens = max(s.max_sample_tokens, len(sample.input_ids))


def build_samples(
    dialogues,
    tokenizer,
    max_length: int,
    last_reply_only: bool = False,
    enable_thinking: bool = False,
    progress: bool = False,
):
    """Build per-reply samples. `last_reply_only` is for single-turn-split eval items, whose only
    target is the final (reference) reply. Returns (samples, SampleStats)."""
    b = _Builder(tokenizer, max_length, enable_thinking)
    samples: list[Sample] = []
    chunks = range(0, len(dialogues), CHUNK)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="构建样本", unit="批", total=len(chunks))
    for c0 in chunks:
        chunk = dialogues[c0 : c0 + CHUNK]
        plans = []
        for d in chunk:
            targets = d.targets()
            if last_reply_only:
                targets = targets[-1:]
            plans.append(targets)
        contexts = [render(tokenizer, d.messages[: t[-1]], True, enable_thinking) for d, t in zip(chunk, plans)]
        ctx_ids = tokenizer(contexts, add_special_tokens=False)["input_ids"]
        replies = [d.messages[a]["content"] for d, t in zip(chunk, plans) for a in t]
        reply_ids = tokenizer(replies, add_special_tokens=False)["input_ids"] if replies else []
        pos = 0
        for d, targets, ids in zip(chunk, plans, ctx_ids):
            these = [r + [b.eot] for r in reply_ids[pos : pos + len(targets)]]
            pos += len(targets)
            check = b.stats.dialogues < SELF_CHECK_DIALOGUES
            for s in b.dialogue_samples(d, targets, ids, these, check):
                b.add(s)
                samples.append(s)
            b.stats.dialogues += 1
    return samples, b.stats


def dump_samples(samples, path) -> None:
    """JSON Lines, one sample per line: dialogue_index, turn_index, message_index, input_ids, labels."""
    from .files import atomic_write_text

    lines = (json.dumps(asdict(s), ensure_ascii=False) for s in samples)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
