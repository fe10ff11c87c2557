"""From samples to the batch the model sees: rows, padding, the tree attention mask, the collator.

Two ideas, named apart:
    tree  one dialogue's shared_prefix layout (data.sample_types.Tree): a trunk and one branch per reply.
          `SampleCollator` gives it a 4-D boolean attention mask -- each branch sees its own part of the
          trunk and itself, causally -- and position ids that continue from what each branch sees, so every
          reply is predicted from exactly its per_turn context.
    row   one line of the batch. With --packing a row holds several samples or trees (`fill_rows`,
          `merge_features`), each starting a tree of its own that sees nothing of the others.
--pack_length caps both (`resolve_pack_length`). Padding is done here, for training, batch generation and
reference perplexity alike.
"""
from psydt_lora.data.sample_types import IGNORE_INDEX


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


def resolve_pack_length(pack_length: int | None, max_length: int) -> int:
    """--pack_length: the most tokens a shared_prefix tree holds and, with --packing, a row. By default 1.5x
    max_length: a tree holds one history and every reply's branch, so it may be longer than any one
    per_turn sample (whose context stays within max_length); 1.5x fits a typical PsyDTCorpus dialogue
    (~1,500 history tokens plus ~18 short replies) in one tree at the default 2048."""
    return pack_length or max_length + max_length // 2


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
    Passed to the model as `logits_to_keep`, so the LM head (151,936 logits a position for Qwen3) runs
    there alone -- about a quarter of a shared_prefix tree -- instead of everywhere."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)


class SampleCollator:
    """Dynamic padding (labels padded with -100). Batches holding shared_prefix trees get a 4-D boolean
    attention mask -- each reply's branch sees its own part of the trunk and itself, causally -- (or the
    same mask as a flex_attention BlockMask) and explicit position ids; plain samples get the usual 2-D
    padding mask. Counts padding as it goes."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None, block_mask: bool = False):
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of
        self.block_mask = block_mask  # trees get a flex_attention BlockMask instead of the 4-D tensor
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
    """(4-D boolean attention mask, position ids) for trees (or rows of them) padded to `width` (see `tree_allows`)."""
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
