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
from psydt_lora.data.packing import IGNORE_INDEX
from psydt_lora.data.samples import PerTurnView, Sample, SampleStats

CACHE_DIR = ".psydt_cache"
# the code that decides a sample: any change to it makes a new fingerprint (paths from the package root)
_CODE = ("data/samples.py", "data/packing.py", "prompt.py", "data/dialogues.py", "data/sample_cache.py")


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


class CachedSamples:
    """The cached samples as a sequence of `Sample` (rows are read from the Arrow files on demand)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        row = self.dataset[i]
        flat = row["branches"]
        packed = bool(flat)
        one = lambda v: v if packed or len(v) != 1 else v[0]  # noqa: E731  (per_turn samples hold one reply)
        ids = row["input_ids"]
        labels = [t if on else IGNORE_INDEX for t, on in zip(ids, row["supervised"])]
        return Sample(row["dialogue_index"], one(row["turn_index"]), one(row["message_index"]), ids,
                      labels, row["position_ids"] if packed else None,
                      _pairs(flat) if packed else None)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

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

    listed = lambda v: v if isinstance(v, list) else [v]  # noqa: E731
    flat_branches = [[x for b in s.branches for x in b] if s.branches else [] for s in samples]
    return pa.table({
        "dialogue_index": pa.array([s.dialogue_index for s in samples], type=pa.int64()),
        "turn_index": _list_column([listed(s.turn_index) for s in samples]),
        "message_index": _list_column([listed(s.message_index) for s in samples]),
        "input_ids": _list_column([s.input_ids for s in samples]),
        # labels are the input ids where supervised: one byte a token instead of a second copy of the ids
        "supervised": _list_column([np.asarray(s.labels) != IGNORE_INDEX for s in samples], "uint8"),
        "position_ids": _list_column([s.position_ids or [] for s in samples]),
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
        view = saved.pop("per_turn_view", False)
        say(f"[样本] cache hit：直接读取 {folder}（数据、分词器、模板和设置都没变）")
        samples = CachedSamples(datasets.load_from_disk(str(folder / "samples")))
        return (PerTurnView(samples) if view else samples), SampleStats(**saved)
    samples, stats = build()
    view = isinstance(samples, PerTurnView)  # per_turn: its packs are stored, the samples read out of them
    try:
        def fill(tmp):
            datasets.Dataset(_as_table(samples.packs if view else samples)).save_to_disk(str(tmp / "samples"))
            atomic_write_json(tmp / "stats.json", {**asdict(stats), "per_turn_view": view})

        write_dir(folder, fill)
        say(f"[样本] 已缓存到 {folder}，下次相同设置直接读取")
    except OSError as err:  # a read-only data folder: no cache, nothing else changes
        say(f"[样本] 无法写入样本缓存（{err.strerror}），下次仍会重新构建")
    return samples, stats
