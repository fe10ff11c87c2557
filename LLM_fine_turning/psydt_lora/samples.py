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

from .packing import IGNORE_INDEX, assemble_pack, default_pack_length, pack_shared_prefix
from .prompt import (encode, encode_many, end_of_turn_id, fit_history, generation_prompt, prompt_ids, render,
                     render_many, round_starts)

SELF_CHECK_DIALOGUES = 3
CHUNK = 512  # dialogues tokenised per batch


@dataclass
class Sample:
    dialogue_index: int  # record index in the data file
    turn_index: int | list  # 0-based index of this reply among the dialogue's trained replies (a list for packs)
    message_index: int | list  # index of the reply in the dialogue's messages (a list for packs)
    input_ids: list[int]
    labels: list[int]
    # shared_prefix packs only: where each reply's branch starts and how much of the trunk it sees
    position_ids: list[int] | None = None
    branches: list | None = None  # [(branch start, visible trunk length)]


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
    per_turn_samples: int | None = None  # shared_prefix: what per_turn would have processed
    per_turn_tokens: int | None = None
    fast_path_disabled: bool = False
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mean_sample_tokens"] = round(self.tokens / self.samples, 1) if self.samples else 0
        return d


class _Builder:
    def __init__(self, tokenizer, max_length: int, enable_thinking: bool, pack_length: int | None = None):
        self.tok = tokenizer
        self.max_length = max_length
        self.pack_length = pack_length or max_length
        self.enable_thinking = enable_thinking
        self.gen_ids = encode(tokenizer, generation_prompt(tokenizer, enable_thinking))
        self.turn_start = self.gen_ids[0]
        self.eot = end_of_turn_id(tokenizer)
        self.stats = SampleStats()
        self.fast_ok = True
        self.span_ok = True  # truncated contexts can be spliced from token spans (checked on the first ones)
        self.span_checks = 0

    # -- exact path -------------------------------------------------------------------------------
    def exact_context(self, messages, a: int, reply_len: int, first_round: int = 0):
        """Context ids for the reply at message `a`, rendered exactly, truncated by whole rounds.
        Returns (ids, dropped_rounds, reply_room) or None when even the last round does not fit."""
        ids, dropped = fit_history(self.tok, messages[:a], self.max_length - reply_len, self.enable_thinking, first_round)
        room = min(reply_len, self.max_length - len(ids))
        return None if room <= 0 else (ids, dropped, room)

    # -- token-span arithmetic on a dialogue's one rendering ----------------------------------------
    def turn_starts(self, ctx_ids, targets):
        """Token positions where each message's turn starts in the rendering of the dialogue up to its
        last target, or None when the fast path is off or the rendering is not one turn per message
        followed by the generation prompt."""
        if not self.fast_ok or ctx_ids is None:
            return None
        starts = [i for i, t in enumerate(ctx_ids) if t == self.turn_start]
        if len(starts) != targets[-1] + 1 or ctx_ids[-len(self.gen_ids):] != self.gen_ids:
            return None
        return starts

    def first_fitting_round(self, msgs, a, starts, sys_len, reply_len):
        """(rounds, r): the rounds of msgs[:a] and the oldest one from which system prompt + history +
        generation prompt + reply fit in max_length (the last round when none does)."""
        rounds = round_starts(msgs[:a])
        for r, i in enumerate(rounds):
            if sys_len + starts[a] - starts[i] + len(self.gen_ids) + reply_len <= self.max_length:
                return rounds, r
        return rounds, len(rounds) - 1

    # -- one dialogue -----------------------------------------------------------------------------
    def direct_packs(self, d, targets, ctx_ids, reply_ids):
        """shared_prefix built straight from the dialogue's one tokenisation, without materialising
        per-reply samples. Each reply's per_turn context is system + messages[j:a] (j = first kept
        message; the whole history when nothing is dropped), found by token-span arithmetic as in
        `per_turn_samples`. Consecutive replies with the same j share a trunk; a pack closes when the
        next branch would not fit in pack_length. None when the general path is needed."""
        msgs = d.messages
        starts = self.turn_starts(ctx_ids, targets) if self.span_ok else None
        if starts is None or any(msgs[a - 1]["role"] != "user" for a in targets):
            return None
        has_sys = msgs[0]["role"] == "system"
        sys_len = starts[1] if has_sys else 0
        first_body = 1 if has_sys else 0
        g = len(self.gen_ids)
        st = self.stats
        plan = []  # (j, a, reply) per reply; j = first kept message index
        for a, reply in zip(targets, reply_ids):
            j = first_body
            if starts[a] + g + len(reply) > self.max_length:
                rounds, r = self.first_fitting_round(msgs, a, starts, sys_len, len(reply))
                j = rounds[r]
                ctx_len = sys_len + starts[a] - starts[j] + g
                if ctx_len >= self.max_length:
                    st.dropped_too_long_samples += 1
                    continue
                if j != first_body:
                    st.truncated_history_samples += 1
                    st.dropped_rounds += r
                if ctx_len + len(reply) > self.max_length:
                    st.truncated_reply_samples += 1
                    reply = reply[: self.max_length - ctx_len]
            plan.append((j, a, reply))
            length = sys_len + starts[a] - starts[j] + g + len(reply)
            st.samples += 1
            st.tokens += length
            st.supervised_tokens += len(reply)
            st.max_sample_tokens = max(st.max_sample_tokens, length)
        packs, cur = [], None
        for turn, (j, a, reply) in enumerate(plan):
            head = ctx_ids[:sys_len] if j != first_body else []
            visible = len(head) + starts[a] - starts[j] if j != first_body else starts[a]
            if cur is not None and cur["j"] == j and visible + cur["branches"] + g + len(reply) <= self.pack_length:
                cur["a"] = a
                cur["items"].append((turn, a, visible, reply))
                cur["branches"] += g + len(reply)
                continue
            cur = {"j": j, "a": a, "head": head, "items": [(turn, a, visible, reply)], "branches": g + len(reply)}
            packs.append(cur)
        out = []
        for p in packs:
            j = p["j"]
            trunk = ctx_ids[:starts[p["a"]]] if j == first_body else p["head"] + ctx_ids[starts[j]:starts[p["a"]]]
            branches = [(visible, self.gen_ids + reply, [IGNORE_INDEX] * g + reply, turn, a)
                        for turn, a, visible, reply in p["items"]]
            out.append(assemble_pack(d.index, trunk, branches))
        return out

    def per_turn_samples(self, d, targets, ctx_ids, reply_ids, check: bool):
        msgs = d.messages
        starts = self.turn_starts(ctx_ids, targets)
        fast = starts is not None
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
                    # Drop the oldest rounds by token spans: system + the most recent rounds that fit.
                    sys_len = starts[1] if has_sys else 0
                    rounds, first = self.first_fitting_round(msgs, a, starts, sys_len, len(reply))
                    spliced = ctx_ids[:sys_len] + ctx_ids[starts[rounds[first]]: starts[a]] + self.gen_ids
                    result = None
                    if self.span_checks < SELF_CHECK_DIALOGUES or not self.span_ok:
                        # the same self-check as above, for contexts whose oldest rounds were dropped
                        self.span_checks += 1
                        self.stats.exact_path_samples += 1
                        result = self.exact_context(msgs, a, len(reply), first_round=first)
                        if result is None or result[0] != spliced:
                            self.span_ok = False
                    if self.span_ok:
                        room = min(len(reply), self.max_length - len(spliced))
                        result = (spliced, first, room) if room > 0 else None
                    context = None
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
        s.supervised_tokens += len(sample.labels) - sample.labels.count(IGNORE_INDEX)
        s.max_sample_tokens = max(s.max_sample_tokens, len(sample.input_ids))


def build_samples(
    dialogues,
    tokenizer,
    max_length: int,
    last_reply_only: bool = False,
    enable_thinking: bool = False,
    progress: bool = False,
    pack: bool = False,
    pack_length: int | None = None,
):
    """Build per-reply samples (or, with `pack`, shared_prefix packs of them). `last_reply_only` is for
    single-turn-split eval items, whose only target is the final (reference) reply.
    Returns (samples, SampleStats); in pack mode the stats count packs and keep per_turn's counts beside."""
    pack_length = pack_length or default_pack_length(max_length)
    b = _Builder(tokenizer, max_length, enable_thinking, pack_length)
    samples: list[Sample] = []
    packs: list[Sample] = []
    plans = []
    for d in dialogues:
        targets = d.targets()
        plans.append(targets[-1:] if last_reply_only else targets)
    # every dialogue rendered once (in parallel for big corpora: the sandboxed template engine is slow)
    all_contexts = render_many(tokenizer, [d.messages[: t[-1]] for d, t in zip(dialogues, plans)], True, enable_thinking)
    chunks = range(0, len(dialogues), CHUNK)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="构建样本", unit="批", total=len(chunks))
    for c0 in chunks:
        chunk = dialogues[c0 : c0 + CHUNK]
        chunk_plans = plans[c0 : c0 + CHUNK]
        ctx_ids = encode_many(tokenizer, all_contexts[c0 : c0 + CHUNK])
        replies = [d.messages[a]["content"] for d, t in zip(chunk, chunk_plans) for a in t]
        reply_ids = encode_many(tokenizer, replies) if replies else []
        pos = 0
        for d, targets, ids in zip(chunk, chunk_plans, ctx_ids):
            these = [r + [b.eot] for r in reply_ids[pos : pos + len(targets)]]
            pos += len(targets)
            check = b.stats.dialogues < SELF_CHECK_DIALOGUES
            b.stats.dialogues += 1
            if pack and not check:
                direct = b.direct_packs(d, targets, ids, these)
                if direct is not None:
                    packs.extend(direct)
                    continue
            per_turn = b.per_turn_samples(d, targets, ids, these, check)
            for s in per_turn:
                b.add(s)
            if pack:
                packs.extend(pack_shared_prefix(per_turn, len(b.gen_ids), pack_length))
            else:
                samples.extend(per_turn)
    if pack:
        st = b.stats
        st.per_turn_samples, st.per_turn_tokens = st.samples, st.tokens
        st.samples, st.tokens = len(packs), sum(len(p.input_ids) for p in packs)
        st.max_sample_tokens = max((len(p.input_ids) for p in packs), default=0)
        return packs, st
    return samples, b.stats


def build_dialogue_samples(dialogues, tokenizer, max_length: int, enable_thinking: bool = False):
    """What other tools train: each dialogue rendered once, every reply supervised in that one sequence.
    Not the per_turn objective: a reply's context is rendered as history (for Qwen3, the last reply gets
    the empty think block and earlier ones do not), and a dialogue longer than max_length is cut."""
    b = _Builder(tokenizer, max_length, enable_thinking)
    out = []
    for d in dialogues:
        targets = d.targets()
        msgs = d.messages[: targets[-1] + 1]
        text = render(tokenizer, msgs, False, enable_thinking)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        labels = [IGNORE_INDEX] * len(ids)
        starts = [i for i, t in enumerate(ids) if t == b.turn_start]
        for k in targets:
            first_token = starts[k] if k < len(starts) else 0
            at = text.find(msgs[k]["content"], offsets[first_token][0])
            end = at + len(msgs[k]["content"])
            for i in range(first_token, len(ids)):  # from this reply's turn on, not from the dialogue's start
                c0, c1 = offsets[i]
                if c0 >= at and c1 <= end and c1 > c0:
                    labels[i] = ids[i]
                elif c0 >= end and ids[i] == b.eot:
                    labels[i] = ids[i]
                    break
        if len(ids) > max_length:
            b.stats.truncated_reply_samples += 1
            ids, labels = ids[:max_length], labels[:max_length]
        sample = Sample(d.index, list(range(len(targets))), targets, ids, labels)
        if any(t != IGNORE_INDEX for t in labels):
            b.add(sample)
            out.append(sample)
        b.stats.dialogues += 1
    return out, b.stats


SAMPLE_MODES = ("shared_prefix", "per_turn", "dialogue")


def build_training_samples(dialogues, tokenizer, max_length, mode="shared_prefix", enable_thinking=False, progress=False,
                           pack_length=None):
    """Samples for `mode`; see README for what each one trains. Returns (samples, SampleStats)."""
    if mode == "dialogue":
        return build_dialogue_samples(dialogues, tokenizer, max_length, enable_thinking)
    return build_samples(dialogues, tokenizer, max_length, enable_thinking=enable_thinking, progress=progress,
                         pack=mode == "shared_prefix", pack_length=pack_length)


def dump_samples(samples, path) -> None:
    """JSON Lines, one sample per line: dialogue_index, turn_index, message_index, input_ids, labels."""
    from .files import atomic_write_text

    lines = (json.dumps({k: v for k, v in asdict(s).items() if v is not None}, ensure_ascii=False) for s in samples)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
