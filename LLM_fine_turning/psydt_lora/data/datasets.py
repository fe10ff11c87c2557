"""Several datasets in one run: which ones (train files, hub ids or a dataset spec), and how they mix.

A dataset spec is a small JSON or YAML file, in the spirit of LLaMA-Factory's dataset_info.json:

    datasets:                      # a list, or a mapping name -> entry
      - name: smilechat
        path: smilechat/dialogues.json   # a file or folder, relative to the spec file
        weight: 0.5                      # a seeded half of its dialogues (2 = every dialogue twice)
      - name: cpsycound
        hub: CAS-SIAT-XinHai/CPsyCounD   # a dataset id on --hub (or `hub_name: huggingface`)
        hub_file: CPsyCounD.json         # optional: one file of it
        system_prompt: 你是一位心理咨询师。 # for its dialogues without one
        max_items: 1000                  # the first N dialogues
      - name: mine
        path: mine.jsonl
        format: sharegpt                 # any shape: name the columns and role tags
        columns: {messages: dialog}
        tags: {role_tag: speaker, content_tag: text, user_tag: 访客, assistant_tag: 咨询师}

The mix, in order: each dataset's first `max_items` dialogues; the dialogues a system prompt where they
have none; exact duplicates (the same turns, whatever the system prompt) dropped across and within datasets,
the first kept; a held-out share by dialogue (--val_size); then each weight applied. Every random choice is
seeded, so the same inputs and seed give the same mix.
"""
import hashlib
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from psydt_lora.data.dialogues import Dialogue, ReadStats, check_format
from psydt_lora.data.formats import FORMAT_NAMES, layout_for, read_source, source_files
from psydt_lora.errors import PsyDTError
from psydt_lora.files import json_problem, read_user_text
from psydt_lora.hub import HUBS

HUB_PREFIX = "hub:"
HELDOUT_FILE = "heldout_test.json"  # in the output folder: the held-out dialogues as a test file
ENTRY_KEYS = {"name", "path", "hub", "hub_file", "hub_name", "format", "columns", "tags", "system_prompt",
              "max_items", "weight"}


@dataclass
class DatasetEntry:
    name: str
    where: str  # how the user named it, for messages: "--train_file x" or "数据集说明 f 的 datasets[1]"
    path: str | None = None
    hub: str | None = None
    hub_file: str | None = None
    hub_name: str | None = None
    format: str = "auto"
    columns: dict | None = None
    tags: dict | None = None
    system_prompt: str | None = None
    max_items: int | None = None
    weight: float = 1.0


@dataclass
class Mix:
    train: list  # Dialogue, weights applied (a dialogue may appear several times)
    heldout: list  # Dialogue, never in train
    rows: list = field(default_factory=list)  # one dict of counts per dataset
    duplicates: int = 0
    stats: list = field(default_factory=list)  # each dataset's ReadStats

    def read_stats(self) -> ReadStats:
        total = ReadStats()
        for st in self.stats:
            for k in vars(total):
                setattr(total, k, getattr(total, k) + getattr(st, k))
        return total


# -- which datasets ------------------------------------------------------------------------------------
def entries_from_args(train_files, spec_file, max_items, check=None) -> list[DatasetEntry]:
    """From repeated or comma-separated --train_file values (a path, or hub:OWNER/NAME) and --dataset_spec;
    `max_items` caps each dataset that sets no max_items of its own. `check` checks each spec entry (default:
    `check_entry`, the dialogue formats; data.pairs passes its own)."""
    entries = []
    for value in train_files or []:
        for item in (v.strip() for v in value.split(",")):
            if item:
                hub = item[len(HUB_PREFIX):] if item.startswith(HUB_PREFIX) else None
                entries.append(DatasetEntry(name=_name_of(hub or item), where=f"--train_file {item}",
                                            path=None if hub else item, hub=hub))
    if spec_file:
        entries += read_spec(spec_file, check)
    for e in entries:
        if e.max_items is None and max_items:
            e.max_items = max_items
    for e in entries:
        if e.hub and not re.fullmatch(r"[\w.-]+/[\w.-]+", e.hub):
            raise PsyDTError(f"{e.where}：hub 数据集 id 应该是 作者/名字 的形式（例如 YIRONGCHEN/PsyDTCorpus），收到 {e.hub!r}。")
    names = Counter(e.name for e in entries)
    for e in entries:  # two --train_file files of the same name from different folders: tell them apart
        if names[e.name] > 1 and e.path and e.where.startswith("--train_file"):
            e.name = str(Path(e.path))
    dup = [n for n, c in Counter(e.name for e in entries).items() if c > 1]
    if dup:
        raise PsyDTError(f"数据集名字 {dup[0]!r} 出现了不止一次：每个数据集的 name 必须不同。")
    return entries


def _name_of(value: str) -> str:
    path = Path(value)
    return path.stem if path.suffix else path.name or value


def read_spec(path, check=None) -> list[DatasetEntry]:
    path = Path(path)
    text = read_user_text(path, "数据集说明 --dataset_spec")
    if path.suffix.lower() in (".yaml", ".yml"):
        data = _yaml(path, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PsyDTError(f"数据集说明 {path} 不是合法的 JSON（{json_problem(err)}）。") from None
    items = data.get("datasets") if isinstance(data, dict) and "datasets" in data else data
    if isinstance(items, dict):
        items = [{"name": k, **v} if isinstance(v, dict) else v for k, v in items.items()]
    if not isinstance(items, list) or not items:
        raise PsyDTError(f"数据集说明 {path} 需要一个非空的 datasets 列表（或 名字: 设置 的映射）。")
    return [_entry(path, i, item, check or check_entry) for i, item in enumerate(items)]


def _yaml(path: Path, text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:  # its words are English; the place is what the user needs
        mark, start = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
        at = f"第 {mark.line + 1} 行第 {mark.column + 1} 列，" if mark is not None else ""
        if start is not None and mark is not None and (start.line, start.column) != (mark.line, mark.column):
            at += f"与第 {start.line + 1} 行第 {start.column + 1} 列开始的部分有关，"
        raise PsyDTError(f"数据集说明 {path} 不是合法的 YAML（{at}YAML 的说明：{getattr(err, 'problem', None) or err}）。"
                         "常见原因：缩进不一致、括号或引号没有闭合、冒号后面少了空格。") from None


def _entry(spec: Path, i: int, item, check) -> DatasetEntry:
    where = f"数据集说明 {spec} 的第 {i + 1} 个数据集"  # counted from 1, as the user counts
    if not isinstance(item, dict):
        raise PsyDTError(f"{where}：必须是对象（name、path 或 hub、format……），实际是 {type(item).__name__}。")
    unknown = sorted(set(item) - ENTRY_KEYS)
    if unknown:
        raise PsyDTError(f"{where}：字段 {unknown[0]!r} 不认识，可用：{', '.join(sorted(ENTRY_KEYS))}。")
    for key in ("name", "path", "hub"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise PsyDTError(f"{where}：字段 {key} 必须是字符串，收到 {item[key]!r}。")
    if bool(item.get("path")) == bool(item.get("hub")):
        raise PsyDTError(f"{where}：path（本地文件或文件夹）和 hub（数据集 id）必须恰好给一个。")
    path = item.get("path")
    if path and not Path(path).is_absolute():
        path = str(spec.parent / path)
    entry = DatasetEntry(name=str(item.get("name") or _name_of(item.get("hub") or path)), where=where,
                         path=path, hub=item.get("hub"), hub_file=item.get("hub_file"), hub_name=item.get("hub_name"),
                         format=item.get("format", "auto"), columns=item.get("columns"), tags=item.get("tags"),
                         system_prompt=item.get("system_prompt"), max_items=item.get("max_items"),
                         weight=item.get("weight", 1.0))
    check(entry)
    return entry


def check_entry(e: DatasetEntry) -> None:
    """Everything about an entry that can be checked without reading its data."""
    check_common(e, FORMAT_NAMES)
    if e.format != "auto":
        layout_for(e.format, e.columns, e.tags, where=f"{e.where}：")


def check_common(e: DatasetEntry, format_names) -> None:
    """The checks every kind of dataset entry shares (dialogues and preference pairs): weight, max_items, the
    names, the format among `format_names`, columns / tags as objects."""
    w = e.weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
        raise PsyDTError(f"{e.where}：字段 weight 必须是正数，收到 {w!r}。")
    if e.max_items is not None and (isinstance(e.max_items, bool) or not isinstance(e.max_items, int) or e.max_items < 0):
        raise PsyDTError(f"{e.where}：字段 max_items 必须是不小于 0 的整数（0 表示全部），收到 {e.max_items!r}。")
    for key in ("name", "path", "hub", "hub_file", "hub_name"):
        value = getattr(e, key)
        if value is not None and not isinstance(value, str):
            raise PsyDTError(f"{e.where}：字段 {key} 必须是字符串，收到 {value!r}。")
    if e.hub_name is not None and e.hub_name not in HUBS:
        raise PsyDTError(f"{e.where}：字段 hub_name 是 {e.hub_name!r}，可用：{', '.join(HUBS)}。")
    if e.format not in format_names:
        raise PsyDTError(f"{e.where}：字段 format 是 {e.format!r}，可用：{', '.join(format_names)}。")
    if (e.columns or e.tags) and e.format == "auto":
        raise PsyDTError(f"{e.where}：给了 columns / tags 时请同时写明 format（它们改的是哪种格式的列名）。")
    for key in ("columns", "tags"):
        if getattr(e, key) is not None and not isinstance(getattr(e, key), dict):
            raise PsyDTError(f"{e.where}：字段 {key} 必须是对象。")
    if e.system_prompt is not None and not isinstance(e.system_prompt, str):
        raise PsyDTError(f"{e.where}：字段 system_prompt 必须是字符串。")


def check_local_entries(entries) -> None:
    """The local paths exist (in a moment, before any download or weight load)."""
    for e in entries:
        if e.path and not Path(e.path).exists():
            what = e.where if e.where.startswith("--train_file") else f"{e.where}的 path {e.path}"
            raise PsyDTError(f"{what} 不存在（既不是文件也不是文件夹）。")


# -- reading and mixing --------------------------------------------------------------------------------
def read_entry(e: DatasetEntry, hub: str, fetch=None):
    """(Source, where it was read from) of one dataset; hub ids through `fetch(repo, hub, filename)`."""
    location, files = locate(e, hub, fetch)
    layout = layout_for(e.format, e.columns, e.tags, where=f"{e.where}：") if e.format != "auto" else None
    source = read_source(location, e.format, layout, limit=e.max_items, source=e.name, files=files)
    check_format(source.dialogues, location, expect_split=False, flag="--train_file" if e.where.startswith("--train_file") else e.where)
    return source, location


def locate(e: DatasetEntry, hub: str, fetch=None):
    """(where the dataset is, the files to read or None = every file): a local path, or a hub dataset fetched
    through `fetch(repo, hub, filename)`, its training files only."""
    return (Path(e.path), None) if e.path else _train_part(fetch(e.hub, e.hub_name or hub, e.hub_file))


def _train_part(folder: Path):
    """(folder, files): a downloaded dataset with split files (train / test / validation) gives its training
    files only; None = every file."""
    if folder.is_file():
        return folder, None
    files = source_files(folder)
    train = [f for f in files if re.search(r"(^|[/_.-])train", str(f.relative_to(folder)).lower())]
    return folder, (train if train and len(train) < len(files) else None)


def build_mix(entries, *, hub: str = "modelscope", seed: int = 42, system_prompt: str | None = None,
              val_size: float = 0, fetch=None, say=print) -> Mix:
    """Read every dataset and mix them as the module docstring says."""
    sources, rows, stats = [], [], []
    for e in entries:
        source, location = read_entry(e, hub, fetch)
        prompt = e.system_prompt if e.system_prompt is not None else system_prompt
        added = _add_system(source.dialogues, prompt)
        sources.append(source.dialogues)
        stats.append(source.stats)
        rows.append({"name": e.name, "location": str(location), "format": source.format,
                     "detected": source.detected, "records": source.stats.records, "system_prompt_added": added,
                     **{k: v for k, v in source.stats.as_dict().items() if k != "records" and v}})
    kept, dup_counts = _dedupe(sources)
    heldout_ids = _heldout(kept, val_size, seed)
    train, heldout = [], []
    for e, row, dialogues, dups in zip(entries, rows, kept, dup_counts):
        mine = [d for d in dialogues if id(d) not in heldout_ids]
        out = [d for d in dialogues if id(d) in heldout_ids]
        if not mine:
            raise PsyDTError(f"{e.where}：去重{'和留出验证集' if out else ''}之后没有剩下可训练的对话"
                             f"（读到 {row['records']} 条，重复 {dups} 条，留出 {len(out)} 条）。")
        weighted = weigh(mine, e.weight, f"{seed}:{e.name}")
        if not weighted:
            raise PsyDTError(f"{e.where}：weight {e.weight:g} 乘以 {len(mine)} 段对话不到半段，这个数据集一段也不会参与训练。"
                             f"请把 weight 调大到至少 {0.5 / len(mine):.3g}，或去掉这个数据集。")
        row.update(duplicates_dropped=dups, heldout=len(out), weight=e.weight, dialogues=len(weighted))
        train += weighted
        heldout += out
    mix = Mix(train, heldout, rows, sum(dup_counts), stats)
    for row in rows:
        say(describe(row))
    return mix


def system_prompts(dialogues: list[Dialogue]) -> dict:
    """The system prompt each dataset trained with (its most common one; None: without)."""
    counts = {}
    for d in dialogues:
        first = d.messages[0]
        counts.setdefault(d.source, Counter())[first["content"] if first["role"] == "system" else None] += 1
    return {name: c.most_common(1)[0][0] for name, c in counts.items()}


def describe(row: dict) -> str:
    how = "自动识别" if row["detected"] else "指定"
    extra = f"，加上系统提示词 {row['system_prompt_added']} 条" if row["system_prompt_added"] else ""
    return (f"[数据] {row['name']}（{row['location']}）：格式 {row['format']}（{how}），读到 {row['records']} 段对话，"
            f"重复丢弃 {row['duplicates_dropped']}，留出验证 {row['heldout']}，权重 {row['weight']:g} → 训练 "
            f"{row['dialogues']} 段{extra}")


def _add_system(dialogues: list[Dialogue], prompt: str | None) -> int:
    """A dialogue without a system message gets `prompt`; a corpus's own prompt is kept."""
    if not prompt:
        return 0
    n = 0
    for d in dialogues:
        if d.messages[0]["role"] != "system":
            d.messages.insert(0, {"role": "system", "content": prompt})
            n += 1
    return n


def digest(dialogues: list[Dialogue]) -> str:
    """Of everything about the dialogues that decides their samples (the sample cache's data key)."""
    h = hashlib.sha256()
    for d in dialogues:
        h.update(json.dumps([d.index, d.messages], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def dialogue_key(d: Dialogue) -> str:
    """Equal for the same turns, whatever the system prompt."""
    turns = [(m["role"], m["content"]) for m in d.messages if m["role"] != "system"]
    return json.dumps(turns, ensure_ascii=False)


def _dedupe(sources):
    seen, kept, counts = set(), [], []
    for dialogues in sources:
        mine, dups = [], 0
        for d in dialogues:
            key = dialogue_key(d)
            if key in seen:
                dups += 1
            else:
                seen.add(key)
                mine.append(d)
        kept.append(mine)
        counts.append(dups)
    return kept, counts


def heldout_count(total: int, val_size: float, unit: str = "段对话") -> int:
    """--val_size as a number of dialogues (or of another `unit`): below 1 a share, from 1 up a count."""
    if not val_size:
        return 0
    n = int(val_size) if val_size >= 1 else max(1, round(total * val_size))
    if n >= total:
        raise PsyDTError(f"--val_size {val_size:g} 要留出 {n} {unit}做验证，但一共只有 {total} {unit}：训练就没有数据了。")
    return n


def _heldout(kept, val_size: float, seed: int) -> set:
    pool = [d for dialogues in kept for d in dialogues]
    n = heldout_count(len(pool), val_size)
    return {id(d) for d in random.Random(f"heldout:{seed}").sample(pool, n)} if n else set()


def weigh(dialogues: list, weight: float, seed: str) -> list:
    """weight w: floor(w) copies of every dialogue, plus a seeded share of (w - floor(w)) of them, in file order."""
    whole = int(weight)
    extra = round((weight - whole) * len(dialogues))
    pick = set(random.Random(seed).sample(range(len(dialogues)), extra))
    out = [d for d in dialogues for _ in range(whole)]
    if whole == 0:
        return [d for i, d in enumerate(dialogues) if i in pick]
    return out + [d for i, d in enumerate(dialogues) if i in pick]


def as_turn_items(dialogues: list[Dialogue]) -> list[Dialogue]:
    """Held-out dialogues in the test-file shape: one item per reply, the history up to it (single-turn split)."""
    items = []
    for d in dialogues:
        for k in d.targets():
            items.append(Dialogue(index=d.index, id=d.id, tag=d.tag, messages=d.messages[: k + 1], source=d.source))
    return items


def split_records(items: list[Dialogue]) -> list[dict]:
    """Items as PsyDTCorpus test-file records, for the batch test to read back."""
    return [{"id": d.id, "normalizedTag": d.tag, "source": d.source, "messages": d.messages} for d in items]

