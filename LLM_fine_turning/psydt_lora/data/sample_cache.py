"""Tokenised training samples kept as a `datasets.Dataset` on disk, keyed by a fingerprint of everything
that decides them: the data file's bytes, which records are used, the tokenizer, the chat template, the
sample settings and the code that builds samples. A rerun or a resume with the same fingerprint loads the
Arrow files (memory-mapped) instead of rendering and tokenising again.

The cache lives next to the data (`.psydt_cache/<fingerprint>/`) when that folder is writable, else in the
per-user cache folder (files.user_cache_dir, like `datasets`' own), or where the caller says; it is written
to a temporary folder and renamed into place, so an interrupted write is never read back. Where even that
fails the samples are simply built.
"""
import hashlib
import json
import os
import stat
from dataclasses import asdict
from pathlib import Path

from psydt_lora.files import atomic_write_json, user_cache_dir, write_dir
from psydt_lora.hub import sha256_file
from psydt_lora.data.sample_types import IGNORE_INDEX, PerTurnView, SampleSource, Tree, WholeDialogue
from psydt_lora.data.samples import SampleStats

CACHE_DIR = ".psydt_cache"
# the code that decides a sample: any change to it makes a new fingerprint (paths from the package root)
_CODE = ("data/sample_types.py", "data/samples.py", "data/packing.py", "prompt.py", "data/dialogues.py", "data/sample_cache.py")


def fingerprint(data_file, tokenizer, settings: dict, data_digest: str | None = None) -> str:
    here = Path(__file__).parents[1]
    vocab = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else json.dumps(
        tokenizer.get_vocab(), sort_keys=True)
    parts = {
        "data": data_digest or sha256_file(Path(data_file)),  # the digest: of the dialogues read, when given
        "tokenizer": hashlib.sha256(vocab.encode("utf-8")).hexdigest(),
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "template": tokenizer.get_chat_template(),
        "settings": settings,
        "code": [hashlib.sha256((here / name).read_bytes()).hexdigest() for name in _CODE],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:24]


KINDS = {"Tree": Tree, "WholeDialogue": WholeDialogue}  # what a build stores (per_turn: its trees)


class CachedSamples(SampleSource):
    """The cached trees or whole dialogues, read from the Arrow files on demand."""

    def __init__(self, dataset, kind=Tree):
        self.dataset, self.kind = dataset, kind

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        row = self.dataset[i]
        ids = row["input_ids"]
        labels = [t if on else IGNORE_INDEX for t, on in zip(ids, row["supervised"])]
        head = (row["dialogue_index"], row["turn_index"], row["message_index"], ids, labels)
        if self.kind is Tree:
            return Tree(*head, row["position_ids"], _pairs(row["branches"]))
        return WholeDialogue(*head)

    def spans(self) -> list[list[tuple[int, int]]]:
        """Each row's branch spans, read from one column (no token ids)."""
        return [_pairs(flat) for flat in self.dataset["branches"]]

    def lengths(self) -> list[int]:
        import pyarrow.compute as pc

        return pc.list_value_length(self.dataset.data.column("input_ids")).to_pylist()


def _pairs(flat):
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _list_column(rows, dtype="int32"):
    """A list<int> Arrow column from Python lists, through one flat NumPy array (each list converted by
    NumPy in C, much faster than letting Arrow convert millions of Python ints one by one)."""
    import numpy as np
    import pyarrow as pa

    arrays = [np.asarray(r, dtype=dtype) for r in rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _as_table(samples):
    import numpy as np
    import pyarrow as pa

    trees = [s for s in samples if isinstance(s, Tree)]  # all of them, or none
    flat_branches = [[x for b in s.branches for x in b] for s in samples]
    return pa.table({
        "dialogue_index": pa.array([s.dialogue_index for s in samples], type=pa.int64()),
        "turn_index": _list_column([s.turn_indices for s in samples]),
        "message_index": _list_column([s.message_indices for s in samples]),
        "input_ids": _list_column([s.input_ids for s in samples]),
        # labels are the input ids where supervised: one byte a token instead of a second copy of the ids
        "supervised": _list_column([np.asarray(s.labels) != IGNORE_INDEX for s in samples], "uint8"),
        "position_ids": _list_column([s.position_ids for s in trees] if trees else [[]] * len(samples)),
        "branches": _list_column(flat_branches),  # (start, visible) pairs, flattened
    })


def cache_root(data_path, chosen=None) -> Path:
    """Beside the data when its folder can take a .psydt_cache/ (a read-only mount or a package's data
    cannot), else the per-user cache folder; `chosen` (the user's) wins."""
    if chosen:
        return Path(chosen)
    folder = Path(data_path) if Path(data_path).is_dir() else Path(data_path).parent
    beside = folder / CACHE_DIR
    if _writable(beside) if beside.exists() else _writable(folder):
        return beside
    return user_cache_dir("samples")


def _writable(folder: Path) -> bool:
    """A folder we may write into: access() says so (a read-only mount says no even to root), and its owner
    has not made it read-only (root would otherwise write into a folder marked r-x)."""
    try:
        return folder.is_dir() and bool(folder.stat().st_mode & stat.S_IWUSR) and os.access(folder, os.W_OK | os.X_OK)
    except OSError:
        return False


def load_or_build(data_file, tokenizer, settings: dict, build, say=print, data_digest=None, cache_dir=None):
    """(samples, stats): from the cache when its fingerprint matches, else `build()` and store the result."""
    import datasets

    datasets.disable_progress_bars()
    key = fingerprint(data_file, tokenizer, settings, data_digest)
    folder = cache_root(data_file, cache_dir) / key
    if (folder / "stats.json").is_file():
        saved = json.loads((folder / "stats.json").read_text("utf-8"))
        view, kind = saved.pop("per_turn_view", False), KINDS[saved.pop("kind")]
        say(f"[样本] cache hit：直接读取 {folder}（数据、分词器、模板和设置都没变）")
        samples = CachedSamples(datasets.load_from_disk(str(folder / "samples")), kind)
        return (PerTurnView(samples) if view else samples), SampleStats(**saved)
    samples, stats = build()
    view = isinstance(samples, PerTurnView)  # per_turn: its trees are stored, the samples read out of them
    stored = samples.trees if view else samples
    try:
        def fill(tmp):
            datasets.Dataset(_as_table(stored)).save_to_disk(str(tmp / "samples"))
            kind = type(stored[0]).__name__ if len(stored) else "Tree"
            atomic_write_json(tmp / "stats.json", {**asdict(stats), "per_turn_view": view, "kind": kind})

        write_dir(folder, fill)
        say(f"[样本] 已缓存到 {folder}，下次相同设置直接读取")
    except OSError as err:  # a read-only data folder: no cache, nothing else changes
        say(f"[样本] 无法写入样本缓存（{err.strerror}），下次仍会重新构建")
    return samples, stats
