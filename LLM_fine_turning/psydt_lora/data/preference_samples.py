"""Preference pairs -> shared-prefix trees: one prompt, every reply to it a leaf.

A `Preference` (data.pairs) is a context and two replies. All pairs whose context renders to the same
prompt become ONE tree: the prompt is stored and computed once, each distinct reply is a leaf that sees
the whole prompt and itself (causally) and nothing of the other leaves -- a pair is a tree with two
leaves, k ranked replies of one prompt a tree with k leaves. The tree lists its pairs as
(chosen leaf, rejected leaf).

The prompt is the inference prompt, rendered by prompt.py exactly as SFT renders a reply's context: the
system prompt added to contexts without one (the same rule as SFT's --system_prompt), thinking off, and
when prompt + the longest reply exceed max_length the oldest whole rounds are dropped
(`prompt.fit_history`, the rule SFT and chat apply); the same truncated prompt for every leaf. When even
the last round leaves a reply no room its end is cut; when the prompt alone does not fit, the pairs are
dropped (counted).

Layout of a tree (the `branches` convention of data.sample_types.Tree, so data.packing's collator gives
it the tree attention mask and position ids):

    trunk  = prompt ids without their last token
    leaf k = [last prompt token] + ids(reply k) + [<|im_end|>]    labels: -100, then the reply's ids

so leaf k, read as a plain row (trunk + leaf k), is exactly the two-row layout's row for that reply, and
its first reply token is predicted from the prompt's last token within the leaf's own segment.
"""
from dataclasses import asdict, dataclass, field

from psydt_lora.data.packing import SampleCollator
from psydt_lora.data.sample_types import IGNORE_INDEX, SampleList
from psydt_lora.errors import PsyDTError
from psydt_lora.prompt import DEFAULT_SYSTEM, encode_many, end_of_turn_id, fit_history, render_prompt


@dataclass
class PreferenceTree:
    """One prompt, its replies as leaves, its pairs as (chosen leaf, rejected leaf)."""
    index: int  # position among the built trees
    where: list[str]  # each pair's "<file>#<record>", in the order of `pairs`
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    branches: list[tuple[int, int]]  # per leaf: (where it starts, how much of the trunk it sees = all of it)
    pairs: list[tuple[int, int]]

    def leaf_row(self, k: int) -> tuple[list[int], list[int]]:
        """Leaf k as its plain row (trunk + leaf): (input_ids, labels) of the two-row layout."""
        start, visible = self.branches[k]
        end = self.branches[k + 1][0] if k + 1 < len(self.branches) else len(self.input_ids)
        return (self.input_ids[:visible] + self.input_ids[start:end],
                [IGNORE_INDEX] * visible + self.labels[start:end])

    def features(self) -> dict:
        return {"input_ids": self.input_ids, "labels": self.labels, "position_ids": self.position_ids,
                "branches": self.branches, "pairs": self.pairs}

    def record(self) -> dict:
        return {"index": self.index, "where": self.where, **self.features()}


@dataclass
class PreferenceStats:
    pairs: int = 0  # pairs kept
    prompts: int = 0  # trees
    leaves: int = 0
    tokens: int = 0  # tokens of the trees (what training computes)
    two_row_tokens: int = 0  # what the two-row layout (a chosen row and a rejected row per pair) computes
    supervised_tokens: int = 0
    max_tree_tokens: int = 0
    truncated_history_prompts: int = 0
    dropped_rounds: int = 0
    truncated_reply_leaves: int = 0
    dropped_too_long_pairs: int = 0
    dropped_identical_pairs: int = 0  # chosen and rejected the same tokens once cut to fit

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tokens_per_pair"] = round(self.tokens / self.pairs, 1) if self.pairs else 0
        d["two_row_tokens_per_pair"] = round(self.two_row_tokens / self.pairs, 1) if self.pairs else 0
        return d


def with_system(messages, system_prompt: str | None) -> list[dict]:
    """The context with `system_prompt` first when it brings none (SFT's rule for dialogues without one)."""
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system_prompt is not None and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def group_by_prompt(prefs, tokenizer, system_prompt, enable_thinking) -> list[tuple[list[dict], list]]:
    """[(context messages, [Preference, ...])]: pairs whose contexts render to the same prompt, first seen first."""
    groups: dict[str, tuple[list[dict], list]] = {}
    for p in prefs:
        if not p.messages or p.messages[-1].get("role") != "user":
            raise PsyDTError(f"{p.where}：上下文 messages 必须以来访者（user）的一轮结束，才能比较两条咨询师回复。")
        messages = with_system(p.messages, system_prompt)
        key = render_prompt(tokenizer, messages, enable_thinking)
        groups.setdefault(key, (messages, []))[1].append(p)
    return list(groups.values())


def assemble(index: int, prompt: list[int], leaves: list[list[int]], pairs, where) -> PreferenceTree:
    """The tree of one prompt's ids and its leaves' reply ids (each ending with the end-of-turn token)."""
    trunk = prompt[:-1]
    ids, labels, pos, spans = list(trunk), [IGNORE_INDEX] * len(trunk), list(range(len(trunk))), []
    for reply in leaves:
        spans.append((len(ids), len(trunk)))
        ids += [prompt[-1]] + reply
        labels += [IGNORE_INDEX] + reply
        pos += range(len(trunk), len(trunk) + 1 + len(reply))
    return PreferenceTree(index, where, ids, labels, pos, spans, pairs)


def fit_group(tokenizer, messages, replies: dict, max_length: int, enable_thinking: bool, stats):
    """(prompt ids, {reply text: ids cut to fit}) for one prompt, or None when the prompt alone does not fit."""
    longest = max(len(r) for r in replies.values())
    prompt, dropped = fit_history(tokenizer, messages, max_length - longest, enable_thinking)
    room = max_length - len(prompt)
    if room <= 0:
        return None
    if dropped:
        stats.truncated_history_prompts += 1
        stats.dropped_rounds += dropped
    cut = {}
    for text, ids in replies.items():
        if len(ids) > room:
            stats.truncated_reply_leaves += 1
        cut[text] = ids[:room]
    return prompt, cut


def tree_of_group(index, tokenizer, messages, group, max_length, enable_thinking, stats) -> PreferenceTree | None:
    """One prompt's tree: its distinct replies (by tokens, after cutting) as leaves, its pairs between them."""
    texts = list(dict.fromkeys(t for p in group for t in (p.chosen, p.rejected)))
    eot = end_of_turn_id(tokenizer)
    replies = {t: ids + [eot] for t, ids in zip(texts, encode_many(tokenizer, texts))}
    fitted = fit_group(tokenizer, messages, replies, max_length, enable_thinking, stats)
    if fitted is None:
        stats.dropped_too_long_pairs += len(group)
        return None
    prompt, cut = fitted
    leaves, leaf_of = [], {}
    for text in texts:
        key = tuple(cut[text])
        if key not in leaf_of:
            leaf_of[key] = len(leaves)
            leaves.append(cut[text])
    pairs, where = [], []
    for p in group:
        c, r = leaf_of[tuple(cut[p.chosen])], leaf_of[tuple(cut[p.rejected])]
        if c == r:
            stats.dropped_identical_pairs += 1
            continue
        pairs.append((c, r))
        where.append(p.where)
    if not pairs:
        return None
    tree = assemble(index, prompt, leaves, pairs, where)
    count(stats, tree, prompt, leaves)
    return tree


def count(stats: PreferenceStats, tree: PreferenceTree, prompt: list[int], leaves) -> None:
    stats.prompts += 1
    stats.pairs += len(tree.pairs)
    stats.leaves += len(leaves)
    stats.tokens += len(tree.input_ids)
    stats.max_tree_tokens = max(stats.max_tree_tokens, len(tree.input_ids))
    stats.supervised_tokens += sum(len(leaf) for leaf in leaves)
    stats.two_row_tokens += sum(2 * len(prompt) + len(leaves[c]) + len(leaves[r]) for c, r in tree.pairs)


def build_preference_samples(prefs, tokenizer, max_length: int, *, system_prompt: str | None = DEFAULT_SYSTEM,
                             enable_thinking: bool = False) -> tuple[SampleList, PreferenceStats]:
    """Preferences -> (SampleList of PreferenceTree, PreferenceStats): one tree per distinct prompt.
    `system_prompt` is SFT's (added to contexts without one; None adds nothing)."""
    stats, trees = PreferenceStats(), []
    for messages, group in group_by_prompt(prefs, tokenizer, system_prompt, enable_thinking):
        tree = tree_of_group(len(trees), tokenizer, messages, group, max_length, enable_thinking, stats)
        if tree is not None:
            trees.append(tree)
    return SampleList(trees), stats


class PreferenceDataset:
    """Trees as the Trainer reads them (feature dicts), each with its leaves' reference log-probs when given."""

    def __init__(self, trees, ref_logps: list[list[float]] | None = None):
        self.trees, self.ref_logps = trees, ref_logps

    def __len__(self):
        return len(self.trees)

    def __getitem__(self, i):
        features = self.trees[i].features()
        if self.ref_logps is not None:
            features = {**features, "ref_logps": self.ref_logps[i]}
        return features


class PreferenceCollator:
    """data.packing's SampleCollator (the tree mask, position ids, logits only at reply positions), plus
    where each leaf is: `leaf_ids` (n, width), the leaf (numbered across the batch) whose reply a label
    belongs to, -1 elsewhere; `pairs` (P, 2) as (chosen leaf, rejected leaf); `ref_logps` (leaves,) when
    the features carry them."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None):
        self.inner = SampleCollator(pad_id, pad_to_multiple_of)

    def __call__(self, features):
        import torch

        batch = self.inner([{k: f[k] for k in ("input_ids", "labels", "position_ids", "branches")} for f in features])
        leaf_ids = torch.full(batch["labels"].shape, -1, dtype=torch.long)
        pairs, offset = [], 0
        for row, f in enumerate(features):
            spans = list(f["branches"]) + [(len(f["input_ids"]), 0)]
            for k in range(len(f["branches"])):
                leaf_ids[row, spans[k][0]:spans[k + 1][0]] = offset + k
            pairs += [(offset + c, offset + r) for c, r in f["pairs"]]
            offset += len(f["branches"])
        batch["leaf_ids"] = leaf_ids.masked_fill(batch["labels"] == IGNORE_INDEX, -1)
        batch["pairs"] = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
        if all("ref_logps" in f for f in features):
            batch["ref_logps"] = torch.tensor([x for f in features for x in f["ref_logps"]], dtype=torch.float64)
        return batch

    def padding_share(self) -> float:
        return self.inner.padding_share()
