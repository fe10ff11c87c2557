"""Dialogues -> training samples: one sample per assistant reply, loss on the reply only.

For reply k the sample is

    input_ids = ids(render_prompt(history before reply k)) + ids(reply k) + [<|im_end|>]
    labels    = -100 ...................................... + ids(reply k) + [<|im_end|>]

i.e. exactly the context inference renders, followed by what the model should say.

Speed: rendering and tokenising every prefix from scratch is quadratic in the dialogue length.
Instead each dialogue is rendered and tokenised once (the context of its last reply), and a reply's
context -- system prompt + messages[j:a] + generation prompt -- is cut from that one tokenisation
(`SpanContexts`). This relies on the chat template rendering history the same way whatever follows,
which holds for Qwen3 when the history ends with a user turn. Before anything is built it is checked
against exact rendering (`RenderedContexts`) on the first dialogues, for whole and cut histories; if it
does not hold, every context of the run is rendered exactly. A dialogue whose rendering is not one turn
per message, or with a reply not preceded by a user turn, is always rendered exactly.

Truncation (context + reply > max_length): keep the system prompt and the whole reply, drop the
oldest whole rounds (a round starts at a user turn) -- the most recent round always stays; if even
that does not fit, the reply's end is cut; if the context alone does not fit, the sample is dropped.
The round is chosen by `prompt.oldest_round_that_fits`, the rule inference applies to a chat's history.
"""
import json
from dataclasses import asdict, dataclass, field, replace

from psydt_lora.data.packing import resolve_pack_length
from psydt_lora.data.sample_types import IGNORE_INDEX, Branch, PerTurnView, Sample, SampleList, Tree, WholeDialogue
from psydt_lora.files import atomic_write_text
from psydt_lora.prompt import (encode, encode_many, end_of_turn_id, generation_prompt, oldest_round_that_fits, prompt_ids,
                               render, render_many, round_starts)

SELF_CHECK_DIALOGUES = 3
CHUNK = 512  # dialogues tokenised per batch


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
    per_turn_samples: int | None = None  # shared_prefix trees: what per_turn would have processed
    per_turn_tokens: int | None = None
    fast_path_disabled: bool = False
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mean_sample_tokens"] = round(self.tokens / self.samples, 1) if self.samples else 0
        return d


def count(stats: SampleStats, length: int, supervised: int) -> None:
    """One sample of `length` tokens, `supervised` of them learned."""
    stats.samples += 1
    stats.tokens += length
    stats.supervised_tokens += supervised
    stats.max_sample_tokens = max(stats.max_sample_tokens, length)


# -- a reply's context: system prompt + messages[j:a] + generation prompt, two ways to get its ids -------
class SpanContexts:
    """Contexts cut from the dialogue's one tokenisation (the rendering up to its last target): the
    system prompt's tokens, then the turns of messages j..a-1, then the generation prompt."""

    exact = False

    def __init__(self, ids, starts, messages, gen_ids):
        self.ids_, self.starts, self.gen_ids = ids, starts, gen_ids
        self.sys_len = starts[1] if messages[0]["role"] == "system" else 0

    @classmethod
    def of(cls, ids, messages, targets, gen_ids):
        """None unless the rendering is one turn per message followed by the generation prompt and every
        reply's history ends with a user turn (what the cut relies on)."""
        starts = [i for i, t in enumerate(ids) if t == gen_ids[0]]
        if (len(starts) != targets[-1] + 1 or ids[-len(gen_ids):] != gen_ids
                or any(messages[a - 1]["role"] != "user" for a in targets)):
            return None
        return cls(ids, starts, messages, gen_ids)

    def trunk(self, j: int, a: int) -> list[int]:
        return self.ids_[:self.sys_len] + self.ids_[self.starts[j]:self.starts[a]]

    def ids(self, j: int, a: int) -> list[int]:
        return self.trunk(j, a) + self.gen_ids

    def length(self, j: int, a: int) -> int:
        return self.sys_len + self.starts[a] - self.starts[j] + len(self.gen_ids)


class RenderedContexts:
    """Contexts rendered one by one by the chat template (the reference; any template)."""

    exact = True

    def __init__(self, tokenizer, messages, enable_thinking: bool):
        self.tok, self.messages, self.enable_thinking = tokenizer, messages, enable_thinking
        self.system = messages[:1] if messages and messages[0]["role"] == "system" else []
        self.cache = {}

    def ids(self, j: int, a: int) -> list[int]:
        if (j, a) not in self.cache:
            self.cache[(j, a)] = prompt_ids(self.tok, self.system + self.messages[j:a], self.enable_thinking)
        return self.cache[(j, a)]

    def length(self, j: int, a: int) -> int:
        return len(self.ids(j, a))


def spans_match_template(tokenizer, dialogues, plans, texts, gen_ids, enable_thinking) -> bool:
    """Whether cutting contexts from one tokenisation gives exactly the template's rendering, checked on
    the given (first) dialogues for every reply's whole history and for its history from a middle round
    on (the shape of a truncated context). Run once, before any sample is built."""
    for d, targets, ids in zip(dialogues, plans, encode_many(tokenizer, texts)):
        spans = SpanContexts.of(ids, d.messages, targets, gen_ids)
        if spans is None:
            continue
        rendered = RenderedContexts(tokenizer, d.messages, enable_thinking)
        for a in targets:
            rounds = round_starts(d.messages[:a])
            for j in {rounds[0], rounds[len(rounds) // 2]}:
                if spans.ids(j, a) != rendered.ids(j, a):
                    return False
    return True


# -- the truncation rule, applied to every reply -----------------------------------------------------
@dataclass(frozen=True)
class PlannedReply:
    """One reply to train, after truncation: the reply at message `message` trained after the system prompt
    + messages[first:message]."""
    turn: int  # its index among the dialogue's trained replies
    message: int  # its index in the dialogue's messages
    first: int  # the first message its context keeps (the start of the oldest round that fits)
    reply: list[int]  # its ids and the end-of-turn token, cut when even the last round leaves no room


def plan_replies(contexts, messages, targets, replies, max_length: int, stats: SampleStats) -> list[PlannedReply]:
    """Each reply's plan: `first` is the oldest round from which context + reply fit in max_length
    (prompt.oldest_round_that_fits: the same rule inference uses); the reply's end is cut when even the
    last round does not leave it room, and the reply is dropped when the context alone does not fit."""
    plan = []
    for turn, (a, reply) in enumerate(zip(targets, replies)):
        rounds = round_starts(messages[:a])
        dropped = oldest_round_that_fits(rounds, lambda j: contexts.length(j, a), max_length - len(reply))
        j = rounds[dropped]
        room = max_length - contexts.length(j, a)
        if room <= 0:
            stats.dropped_too_long_samples += 1
            continue
        if dropped:
            stats.truncated_history_samples += 1
            stats.dropped_rounds += dropped
        if room < len(reply):
            stats.truncated_reply_samples += 1
            reply = reply[:room]
        plan.append(PlannedReply(turn, a, j, reply))
    return plan


def per_turn_samples(index: int, contexts, plan: list[PlannedReply]) -> list:
    out = []
    for p in plan:
        context = contexts.ids(p.first, p.message)
        out.append(Sample(index, p.turn, p.message, context + p.reply, [IGNORE_INDEX] * len(context) + p.reply))
    return out


def span_trees(index: int, spans: SpanContexts, plan: list[PlannedReply], tree_length: int) -> list:
    """shared_prefix trees straight from the plan, without materialising per-reply samples: consecutive
    replies with the same first kept message share a trunk (the longest of their contexts); a tree
    closes when the next branch would not fit in tree_length."""
    g = len(spans.gen_ids)
    groups, cur = [], None
    for p in plan:
        branch = Branch(spans.length(p.first, p.message) - g, spans.gen_ids + p.reply, [IGNORE_INDEX] * g + p.reply,
                        p.turn, p.message)
        if (cur is not None and cur["first"] == p.first
                and branch.visible + cur["size"] + len(branch.input_ids) <= tree_length):
            cur["last"] = p.message
            cur["branches"].append(branch)
            cur["size"] += len(branch.input_ids)
            continue
        cur = {"first": p.first, "last": p.message, "branches": [branch], "size": len(branch.input_ids)}
        groups.append(cur)
    return [Tree.assemble(index, spans.trunk(t["first"], t["last"]), t["branches"]) for t in groups]


def trees_from_samples(samples: list, gen_len: int, tree_length: int) -> list:
    """One dialogue's per-reply samples as few shared_prefix trees with the same loss (the exact path, where
    contexts are rendered one by one).

    A tree holds a trunk (the longest history in it) once, then one branch per reply: the generation
    prompt and the reply. Samples join a tree while their context extends the trunk and the tree fits in
    `tree_length`; a truncated context (older rounds dropped) does not extend the trunk and so starts a
    new tree."""
    trees, cur = [], None
    for s in samples:
        n_ctx = next(i for i, t in enumerate(s.labels) if t != IGNORE_INDEX)
        cut = n_ctx - gen_len  # the branch starts with the generation prompt
        prefix = s.input_ids[:cut]
        branch = Branch(cut, s.input_ids[cut:], s.labels[cut:], s.turn_index, s.message_index)
        if cur is not None:
            size = len(prefix) + sum(len(b.input_ids) for b in cur["branches"]) + len(branch.input_ids)
            if prefix[: len(cur["trunk"])] == cur["trunk"] and size <= tree_length:
                cur["trunk"] = prefix
                cur["branches"].append(branch)
                continue
        cur = {"index": s.dialogue_index, "trunk": prefix, "branches": [branch]}
        trees.append(cur)
    return [Tree.assemble(t["index"], t["trunk"], t["branches"]) for t in trees]


def build_samples(
    dialogues,
    tokenizer,
    max_length: int,
    last_reply_only: bool = False,
    enable_thinking: bool = False,
    progress: bool = False,
    trees: bool = False,
    tree_length: int | None = None,
):
    """Build per-reply samples (or, with `trees`, shared_prefix trees of them, each at most `tree_length`
    tokens: --pack_length). `last_reply_only` is for single-turn-split eval items, whose only target is the
    final (reference) reply. Returns (SampleList, SampleStats); with `trees` the stats count trees and keep
    per_turn's counts beside."""
    tree_length = resolve_pack_length(tree_length, max_length)
    gen_ids = encode(tokenizer, generation_prompt(tokenizer, enable_thinking))
    eot = end_of_turn_id(tokenizer)
    stats, out = SampleStats(), []
    plans = [d.targets()[-1:] if last_reply_only else d.targets() for d in dialogues]
    # every dialogue rendered once (in parallel for big corpora: the sandboxed template engine is slow)
    texts = render_many(tokenizer, [d.messages[: t[-1]] for d, t in zip(dialogues, plans)], True, enable_thinking)
    n = SELF_CHECK_DIALOGUES
    spans_ok = spans_match_template(tokenizer, dialogues[:n], plans[:n], texts[:n], gen_ids, enable_thinking)
    if not spans_ok:
        stats.fast_path_disabled = True
        stats.notes.append("chat template renders history differently by prefix; using exact per-reply rendering")
    chunks = range(0, len(dialogues), CHUNK)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="构建样本", unit="批", total=len(chunks))
    for c0 in chunks:
        chunk, chunk_plans = dialogues[c0:c0 + CHUNK], plans[c0:c0 + CHUNK]
        replies = encode_many(tokenizer, [d.messages[a]["content"] for d, t in zip(chunk, chunk_plans) for a in t])
        pos = 0
        for d, targets, ids in zip(chunk, chunk_plans, encode_many(tokenizer, texts[c0:c0 + CHUNK])):
            these = [r + [eot] for r in replies[pos:pos + len(targets)]]
            pos += len(targets)
            stats.dialogues += 1
            contexts = SpanContexts.of(ids, d.messages, targets, gen_ids) if spans_ok else None
            contexts = contexts or RenderedContexts(tokenizer, d.messages, enable_thinking)
            plan = plan_replies(contexts, d.messages, targets, these, max_length, stats)
            if trees and not contexts.exact:
                for p in plan:  # per_turn's counts, without building its samples
                    count(stats, contexts.length(p.first, p.message) + len(p.reply), len(p.reply))
                out.extend(span_trees(d.index, contexts, plan, tree_length))
                continue
            samples = per_turn_samples(d.index, contexts, plan)
            stats.exact_path_samples += len(samples) if contexts.exact else 0
            for s in samples:
                count(stats, len(s.input_ids), len(s.labels) - s.labels.count(IGNORE_INDEX))
            out.extend(trees_from_samples(samples, len(gen_ids), tree_length) if trees else samples)
    if trees:
        stats.per_turn_samples, stats.per_turn_tokens = stats.samples, stats.tokens
        stats.samples, stats.tokens = len(out), sum(len(t.input_ids) for t in out)
        stats.max_sample_tokens = max((len(t.input_ids) for t in out), default=0)
    return SampleList(out), stats


def build_dialogue_samples(dialogues, tokenizer, max_length: int, enable_thinking: bool = False):
    """What other tools train: each dialogue rendered once, every reply supervised in that one sequence.
    Not the per_turn objective: a reply's context is rendered as history (for Qwen3, the last reply gets
    the empty think block and earlier ones do not), and a dialogue longer than max_length is cut."""
    turn_start = encode(tokenizer, generation_prompt(tokenizer, enable_thinking))[0]
    eot = end_of_turn_id(tokenizer)
    stats, out = SampleStats(), []
    for d in dialogues:
        targets = d.targets()
        msgs = d.messages[: targets[-1] + 1]
        text = render(tokenizer, msgs, False, enable_thinking)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        labels = [IGNORE_INDEX] * len(ids)
        starts = [i for i, t in enumerate(ids) if t == turn_start]
        for k in targets:
            first_token = starts[k] if k < len(starts) else 0
            at = text.find(msgs[k]["content"], offsets[first_token][0])
            end = at + len(msgs[k]["content"])
            for i in range(first_token, len(ids)):  # from this reply's turn on, not from the dialogue's start
                c0, c1 = offsets[i]
                if c0 >= at and c1 <= end and c1 > c0:
                    labels[i] = ids[i]
                elif c0 >= end and ids[i] == eot:
                    labels[i] = ids[i]
                    break
        if len(ids) > max_length:
            stats.truncated_reply_samples += 1
            ids, labels = ids[:max_length], labels[:max_length]
        if any(t != IGNORE_INDEX for t in labels):
            count(stats, len(ids), len(labels) - labels.count(IGNORE_INDEX))
            out.append(WholeDialogue(d.index, list(range(len(targets))), targets, ids, labels))
        stats.dialogues += 1
    return SampleList(out), stats


def per_turn_stats(view: PerTurnView, stats: SampleStats) -> SampleStats:
    """The shared_prefix build's stats as per_turn's (its per-turn counts kept beside the tree counts)."""
    longest = max(view.lengths(), default=0)
    return replace(stats, samples=stats.per_turn_samples, tokens=stats.per_turn_tokens, max_sample_tokens=longest,
                   per_turn_samples=None, per_turn_tokens=None)


SAMPLE_MODES = ("shared_prefix", "per_turn", "dialogue")


@dataclass(frozen=True)
class SampleSettings:
    """How dialogues become training samples: the one object the builder and the sample cache's fingerprint read."""
    group = "samples"  # its name in the run record
    max_length: int = 2048  # tokens a sample may hold (the oldest rounds go first)
    mode: str = "shared_prefix"  # one of SAMPLE_MODES
    pack_length: int = 0  # shared_prefix: tokens a tree may hold; 0 = 1.5 x max_length
    enable_thinking: bool = False  # the prompt as inference renders it: thinking off

    def fingerprint(self) -> dict:
        return asdict(self)


def build_with_settings(dialogues, tokenizer, settings: SampleSettings, progress=False):
    """(samples, stats) of `dialogues` as `settings` says."""
    return build_training_samples(dialogues, tokenizer, settings.max_length, settings.mode, settings.enable_thinking,
                                  progress=progress, pack_length=settings.pack_length or None)


def build_training_samples(dialogues, tokenizer, max_length, mode="shared_prefix", enable_thinking=False, progress=False,
                           pack_length=None):
    """Samples for `mode`; see README for what each one trains. Returns (a SampleSource, SampleStats)."""
    if mode == "dialogue":
        return build_dialogue_samples(dialogues, tokenizer, max_length, enable_thinking)
    trees, stats = build_samples(dialogues, tokenizer, max_length, enable_thinking=enable_thinking, progress=progress,
                                 trees=True, tree_length=pack_length)
    if mode == "shared_prefix":
        return trees, stats
    view = PerTurnView(trees)
    return view, per_turn_stats(view, stats)


def dump_samples(samples, path) -> None:
    """JSON Lines, one sample per line: dialogue_index, turn_index, message_index, input_ids, labels."""
    lines = (json.dumps(s.record(), ensure_ascii=False) for s in samples)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
