"""What a training sample is, and what holds them: the bottom of the data wing (imports nothing of ours).

Three kinds of token sequence, each with its own fields:
    Sample        one reply: its per_turn context, then the reply (labels on the reply only)
    WholeDialogue every reply of a dialogue in one sequence (--sample_mode dialogue)
    Tree          one dialogue's shared_prefix layout: a trunk (the history, stored once) and one branch per
                  reply (generation prompt + reply), each seeing only the part of the trunk that is its context
A tree is not a row: with --packing a row of the batch holds several samples or trees side by side
(data.packing.fill_rows); a tree is always one dialogue.

Every holder of samples is a `SampleSource` -- the built list (`SampleList`), per_turn's samples read out
of trees (`PerTurnView`), the cache's Arrow files (data.sample_cache.CachedSamples) -- and answers the same
questions, some without reading token ids: how many, each one, each one's length, each one's branch spans.
"""
import abc
from dataclasses import dataclass, field
from typing import ClassVar

IGNORE_INDEX = -100  # the label of a position that is not learned


@dataclass(frozen=True)
class Branch:
    """One reply of a tree before it is assembled: how much of the trunk it sees, its ids and labels (the
    generation prompt, then the reply), and which reply of the dialogue it is."""
    visible: int  # trunk tokens this reply's context holds
    input_ids: list[int]
    labels: list[int]
    turn_index: int
    message_index: int


@dataclass
class Sample:
    """One reply in its per_turn context."""
    dialogue_index: int  # record index in the training dialogues
    turn_index: int  # 0-based index of this reply among the dialogue's trained replies
    message_index: int  # index of the reply in the dialogue's messages
    input_ids: list[int]
    labels: list[int]
    branches: ClassVar[tuple] = ()  # not a tree

    def features(self) -> dict:
        """What the collator takes."""
        return {"input_ids": self.input_ids, "labels": self.labels}

    def record(self) -> dict:
        """The --dump_samples line (field names as the README gives them)."""
        return {"dialogue_index": self.dialogue_index, "turn_index": self.turn_index,
                "message_index": self.message_index, "input_ids": self.input_ids, "labels": self.labels}


@dataclass
class WholeDialogue:
    """Every trained reply of a dialogue supervised in one sequence (the dialogue rendered once)."""
    dialogue_index: int
    turn_indices: list[int]
    message_indices: list[int]
    input_ids: list[int]
    labels: list[int]
    branches: ClassVar[tuple] = ()

    def features(self) -> dict:
        return {"input_ids": self.input_ids, "labels": self.labels}

    def record(self) -> dict:
        return {"dialogue_index": self.dialogue_index, "turn_index": self.turn_indices,
                "message_index": self.message_indices, "input_ids": self.input_ids, "labels": self.labels}


@dataclass
class Tree:
    """A trunk, then one branch per reply; `branches[k]` = (where branch k starts, how much of the trunk it
    sees). Position ids continue from what each branch sees, so every reply is predicted from exactly its
    per_turn context (data.packing builds the matching attention mask)."""
    dialogue_index: int
    turn_indices: list[int]
    message_indices: list[int]
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    branches: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def assemble(cls, dialogue_index: int, trunk: list[int], branches: list[Branch]) -> "Tree":
        """From the trunk and its branches."""
        ids, labels, pos, spans = list(trunk), [IGNORE_INDEX] * len(trunk), list(range(len(trunk))), []
        for b in branches:
            spans.append((len(ids), b.visible))
            ids += b.input_ids
            labels += b.labels
            pos += range(b.visible, b.visible + len(b.input_ids))
        return cls(dialogue_index, [b.turn_index for b in branches], [b.message_index for b in branches],
                   ids, labels, pos, spans)

    def per_turn(self, b: int) -> Sample:
        """Branch b as its per_turn sample: the trunk up to what it sees, then the branch."""
        start, visible = self.branches[b]
        end = self.branches[b + 1][0] if b + 1 < len(self.branches) else len(self.input_ids)
        return Sample(self.dialogue_index, self.turn_indices[b], self.message_indices[b],
                      self.input_ids[:visible] + self.input_ids[start:end],
                      [IGNORE_INDEX] * visible + self.labels[start:end])

    def features(self) -> dict:
        return {"input_ids": self.input_ids, "labels": self.labels, "position_ids": self.position_ids,
                "branches": self.branches}

    def record(self) -> dict:
        return {"dialogue_index": self.dialogue_index, "turn_index": self.turn_indices,
                "message_index": self.message_indices, "input_ids": self.input_ids, "labels": self.labels,
                "position_ids": self.position_ids, "branches": self.branches}


def branch_lengths(size: int, spans) -> list[int]:
    """Each branch's per_turn sample length (the trunk it sees + the branch) of a tree of `size` tokens."""
    return [visible + (spans[b + 1][0] if b + 1 < len(spans) else size) - start
            for b, (start, visible) in enumerate(spans)]


class SampleSource(abc.ABC):
    """A sequence of samples (or trees) that also tells their lengths and branch spans cheaply."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, i): ...

    @abc.abstractmethod
    def lengths(self) -> list[int]:
        """Each item's token count."""

    @abc.abstractmethod
    def spans(self) -> list:
        """Each item's branch spans (empty for an item that is not a tree)."""

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __bool__(self):
        return len(self) > 0


class SampleList(SampleSource):
    """Samples built in memory."""

    def __init__(self, items=()):
        self.items = list(items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def lengths(self) -> list[int]:
        return [len(s.input_ids) for s in self.items]

    def spans(self) -> list:
        return [s.branches for s in self.items]


class PerTurnView(SampleSource):
    """per_turn's samples read out of shared_prefix trees (`Tree.per_turn`), built when read, so a run
    never holds (or caches) per_turn's ~3.4x more tokens."""

    def __init__(self, trees: SampleSource):
        self.trees = trees
        self.index = [(t, b) for t, sp in enumerate(trees.spans()) for b in range(len(sp))]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        t, b = self.index[i]
        return self.trees[t].per_turn(b)

    def lengths(self) -> list[int]:
        """Each sample's token count from the trees' lengths and spans (for cached trees: no token ids read)."""
        return [n for size, sp in zip(self.trees.lengths(), self.trees.spans()) for n in branch_lengths(size, sp)]

    def spans(self) -> list:
        return [()] * len(self)
