"""The shared-prefix layout, from packs (and rows of several samples) to the batch the model sees.

A pack holds one trunk (a dialogue's history, stored once) and one branch per reply (the generation
prompt and the reply); each branch records where it starts and how much of the trunk it may see.
`PackCollator` turns a list of packs (or plain samples) into padded tensors: for packs a 4-D boolean
attention mask -- each branch sees its own part of the trunk and itself, causally -- and position ids
that continue from what each branch sees, so every reply is predicted from exactly its per_turn
context. With --packing a row holds several samples (`fill_rows`, `merge_features`), each a tree of its
own that sees nothing of the others. Padding is done here, for training, batch generation and reference
perplexity alike.
"""
IGNORE_INDEX = -100


def pad(rows, value: int, width: int | None = None, left: bool = False):
    """Rows of token ids as one (n, width) tensor, padded with `value` on the right (or the left)."""
    import torch

    width = width or max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if left:
                out[i, width - len(r):] = torch.tensor(r)
            else:
                out[i, :len(r)] = torch.tensor(r)
    return out


def padding_mask(rows, width: int | None = None, left: bool = False):
    """1 where a row has a token, 0 on its padding."""
    return pad([[1] * len(r) for r in rows], 0, width or max(len(r) for r in rows), left)


def default_pack_length(max_length: int) -> int:
    """A pack holds one history and every reply's branch, so it may be longer than any one per_turn
    sample (whose context stays within max_length): 1.5x max_length fits a typical PsyDTCorpus
    dialogue (~1,500 history tokens plus ~18 short replies) in one pack at the default 2048."""
    return max_length + max_length // 2


def pack_shared_prefix(samples: list, gen_len: int, max_length: int) -> list:
    """Pack one dialogue's per-reply samples into few sequences with the same loss.

    A pack holds a trunk (the longest history in it) once, then one branch per reply: the generation
    prompt and the reply. Each branch sees only the part of the trunk that is its own per_turn context
    (a 4-D mask built by `PackCollator`), and its position ids continue from that context, so every reply
    is predicted from exactly what per_turn gives it. Samples join a pack while their context extends
    the trunk and the pack fits in `max_length` (the pack length); a truncated context (older rounds dropped) does not
    extend the trunk and so starts a new window.
    """
    packs, cur = [], None
    for s in samples:
        n_ctx = next(i for i, t in enumerate(s.labels) if t != IGNORE_INDEX)
        cut = n_ctx - gen_len  # the branch starts with the generation prompt
        prefix, branch, branch_labels = s.input_ids[:cut], s.input_ids[cut:], s.labels[cut:]
        if cur is not None:
            size = len(prefix) + sum(len(b[1]) for b in cur["branches"]) + len(branch)
            if prefix[: len(cur["trunk"])] == cur["trunk"] and size <= max_length:
                cur["trunk"] = prefix
                cur["branches"].append((len(prefix), branch, branch_labels, s))
                continue
        cur = {"trunk": prefix, "branches": [(len(prefix), branch, branch_labels, s)]}
        packs.append(cur)
    return [assemble_pack(p["branches"][0][3].dialogue_index, p["trunk"],
                          [(v, ids, labels, s.turn_index, s.message_index) for v, ids, labels, s in p["branches"]])
            for p in packs]


def assemble_pack(dialogue_index: int, trunk: list[int], branches):
    """One packed sequence: the trunk, then each branch (visible trunk length, branch ids, branch labels,
    turn index, message index) with position ids continuing from what that branch sees."""
    ids, labels, pos, spans = list(trunk), [IGNORE_INDEX] * len(trunk), list(range(len(trunk))), []
    for visible, branch, branch_labels, _, _ in branches:
        spans.append((len(ids), visible))
        ids += branch
        labels += branch_labels
        pos += range(visible, visible + len(branch))
    from psydt_lora.data.samples import Sample  # samples imports this module; the dataclass is its own

    return Sample(dialogue_index, [b[3] for b in branches], [b[4] for b in branches], ids, labels, pos, spans)


def features(sample) -> dict:
    """What the collator takes from a sample (packs also carry position ids and branch spans)."""
    item = {"input_ids": sample.input_ids, "labels": sample.labels}
    if sample.branches is not None:
        item["position_ids"] = sample.position_ids
        item["branches"] = sample.branches
    return item


def fill_rows(lengths, capacity: int) -> list[list[int]]:
    """Sample indices grouped into rows of at most `capacity` tokens (first fit, longest first; a sample
    longer than `capacity` gets a row of its own). Deterministic; rows in order of their first sample."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fit = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if fit is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[fit].append(i)
            room[fit] -= lengths[i]
    return sorted((sorted(r) for r in rows), key=lambda r: r[0])


def merge_features(parts: list[dict]) -> dict:
    """Several samples' features as one row: each starts a tree of its own (`starts`), keeps its position
    ids and sees nothing of the others (`tree_allows`). A sample's first label is never a target (nothing
    before it in the sample predicts it), so it is set to -100: no sample is predicted from another."""
    if len(parts) == 1:
        return parts[0]
    row = {"input_ids": [], "labels": [], "position_ids": [], "branches": [], "starts": []}
    for f in parts:
        offset = len(row["input_ids"])
        row["starts"].append(offset)
        row["input_ids"] += f["input_ids"]
        row["labels"] += [IGNORE_INDEX] + list(f["labels"][1:])
        row["position_ids"] += f.get("position_ids") or list(range(len(f["input_ids"])))
        row["branches"] += [(offset + start, visible) for start, visible in f.get("branches") or []]
    return row


def supervised_positions(labels):
    """Positions whose next token is supervised in some row: the only ones whose logits the loss needs.
    Passed to the model as `logits_to_keep`, so the LM head (151,669 logits a position for Qwen3) runs
    there alone -- about a quarter of a shared_prefix pack -- instead of everywhere."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)


class PackCollator:
    """Dynamic padding (labels padded with -100). Batches holding shared_prefix packs get a 4-D boolean
    attention mask -- each reply's branch sees its own part of the trunk and itself, causally -- (or the
    same mask as a flex_attention BlockMask) and explicit position ids; plain samples get the usual 2-D
    padding mask. Counts padding as it goes."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None, block_mask: bool = False):
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of
        self.block_mask = block_mask  # packs get a flex_attention BlockMask instead of the 4-D tensor
        self.real_tokens = 0
        self.padded_tokens = 0

    def __call__(self, features):
        width = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        rows = [f["input_ids"] for f in features]
        labels = pad([f["labels"] for f in features], IGNORE_INDEX, width)
        self.real_tokens += sum(len(r) for r in rows)
        self.padded_tokens += len(rows) * width - sum(len(r) for r in rows)
        batch = {"input_ids": pad(rows, self.pad_id, width), "labels": labels,
                 "logits_to_keep": supervised_positions(labels)}
        if not any("branches" in f or "starts" in f for f in features):
            batch["attention_mask"] = padding_mask(rows, width)
            return batch
        batch["attention_mask"], batch["position_ids"] = (tree_block_mask if self.block_mask else tree_mask)(features, width)
        return batch

    def padding_share(self) -> float:
        total = self.real_tokens + self.padded_tokens
        return self.padded_tokens / total if total else 0.0


def tree_layout(features, width: int):
    """Per token of each row padded to `width`: its segment (-1 padding; otherwise one id per trunk and one
    per branch, unique in the row), the window [lo, hi) of its tree's trunk it may see besides its own
    segment (empty for trunk tokens and plain samples), and its position id. A row holds one sample, or
    several (`merge_features`) each starting a tree at one of its `starts`. (seg, lo, hi, pos), each (n, width)."""
    import torch

    n = len(features)
    seg = torch.full((n, width), -1, dtype=torch.long)
    lo = torch.zeros((n, width), dtype=torch.long)
    hi = torch.zeros((n, width), dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    for row, f in enumerate(features):
        length = len(f["input_ids"])
        starts = f.get("starts") or [0]
        spans = f.get("branches") or []
        bounds = sorted(set(starts) | {s for s, _ in spans}) + [length]
        for k in range(len(bounds) - 1):
            seg[row, bounds[k]:bounds[k + 1]] = k
        for b, (start, visible) in enumerate(spans):
            end = min(x for x in bounds if x > start)
            tree = max(s for s in starts if s <= start)
            lo[row, start:end], hi[row, start:end] = tree, tree + visible
        pos[row, :length] = torch.tensor(f.get("position_ids") or list(range(length)))
    return seg, lo, hi, pos


def tree_allows(seg, lo, hi, q, kv):
    """Whether query position q may attend to key position kv (indexable by tensors, broadcasting): a token
    sees its own segment causally and, in a branch, the part of its tree's trunk that is its own context;
    no sample of a row sees another; padding sees itself."""
    own = (seg[q] == seg[kv]) & (kv <= q)
    trunk = (lo[q] <= kv) & (kv < hi[q])
    return ((own | trunk) & (seg[q] >= 0)) | ((seg[q] < 0) & (q == kv))


def tree_mask(features, width: int):
    """(4-D boolean attention mask, position ids) for packs padded to `width` (see `tree_allows`)."""
    import torch

    seg, lo, hi, pos = tree_layout(features, width)
    idx = torch.arange(width)
    q, kv = idx[:, None], idx[None, :]
    mask = torch.stack([tree_allows(seg[r], lo[r], hi[r], q, kv) for r in range(len(features))])
    return mask[:, None], pos


def tree_block_mask(features, width: int, device=None):
    """(flex_attention BlockMask, position ids): the same mask as `tree_mask`, for flex_attention, which
    skips the blocks no query of the block may see."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg, lo, hi, pos = tree_layout(features, width)
    seg, lo, hi = seg.to(device), lo.to(device), hi.to(device)

    def mask_mod(b, h, q, kv):
        return tree_allows(seg[b], lo[b], hi[b], q, kv)

    return create_block_mask(mask_mod, len(features), None, width, width, device=device), pos
