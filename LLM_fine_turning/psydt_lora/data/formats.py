"""Every dialogue format this project reads, in one place; each becomes the one `Dialogue` type.

    messages   OpenAI / PsyDTCorpus: {"messages": [{"role": "system"|"user"|"assistant", "content"}]}
    sharegpt   {"conversations": [{"from": "human"|"gpt"|"system", "value"}], "system"?}
    alpaca     {"instruction", "input"?, "output", "system"?, "history"?: [[question, answer], ...]}
    smilechat  SmileChat as published: a dialogue is a list of {"role": "client"|"counselor", "content"}
    cpsycoune  CPsyCounE: a dialogue is a list of strings "求助者：..." / "支持者：..."
    cpsycound  CPsyCounD raw text (.txt): turns "来访者：..." / "心理咨询师：...", one dialogue a file

The two transcript formats (cpsycoune, cpsycound) are read as published: a line that is wholly a bracketed
stage direction ("（一段时间后）", "【咨询结束】"; with or without a speaker tag) is dropped and counted, an
untagged line continues the turn before it, and the same speaker twice in a row (as around a stage direction)
is one turn (dialogues.to_dialogue merges and counts them). A bracket inside an utterance is kept.

A source is a file or a folder (every .json/.jsonl/.txt/.parquet/.csv/.arrow file in it, in natural name
order). JSON and JSON Lines are read here (their errors name the line); Parquet, CSV and Arrow through
`datasets`. A JSON file whose top level is one dialogue (a list of strings or of turn objects, as
CPsyCounE and SmileChat's own repository publish them) counts as one record.

The format is detected per record and must be the same for every record of a source. Any other shape is
read through a `Layout` declared in a dataset spec: which column holds the turns, which keys hold role and
content, which role tags mean client, counsellor and system (the spirit of LLaMA-Factory's dataset_info.json).
"""
import json
import re
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from psydt_lora.data.dialogues import MISSING, ReadStats, to_dialogue, where_is
from psydt_lora.errors import PsyDTError
from psydt_lora.files import load_records

JSON_SUFFIXES = (".json", ".jsonl")
TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
TEXT_SUFFIXES = (".txt",)
SUFFIXES = (*JSON_SUFFIXES, *TABLE_SUFFIXES, *TEXT_SUFFIXES)


@dataclass(frozen=True)
class Layout:
    """Where a format keeps its turns. kind: "turns" (a list of role/content objects), "alpaca", or "prefixed"
    (strings that start with a speaker tag and a colon). Tags are the role values meaning each speaker."""
    kind: str
    turns: str | None = None  # the column holding the turn list; None = the record is the list itself
    role: str = "role"
    content: str = "content"
    user: tuple = ()
    assistant: tuple = ()
    system: tuple = ("system",)
    system_column: str | None = None
    id_column: str | None = "id"
    tag_column: str | None = None
    prompt: str = "instruction"  # alpaca columns
    query: str = "input"
    response: str = "output"
    history: str = "history"


FORMATS = {
    "messages": Layout("turns", "messages", user=("user",), assistant=("assistant",), tag_column="normalizedTag"),
    "sharegpt": Layout("turns", "conversations", "from", "value", user=("human", "user"), assistant=("gpt", "assistant"),
                       system_column="system"),
    "alpaca": Layout("alpaca", system_column="system"),
    "smilechat": Layout("turns", None, user=("client",), assistant=("counselor",), system=()),
    "cpsycoune": Layout("prefixed", None, user=("求助者",), assistant=("支持者",), system=()),
    "cpsycound": Layout("prefixed", None, user=("来访者",), assistant=("心理咨询师",), system=()),
}
FORMAT_NAMES = ("auto", *FORMATS)
# spec keys -> Layout fields (LLaMA-Factory's names where it has one)
COLUMN_KEYS = {"messages": "turns", "system": "system_column", "id": "id_column", "tag": "tag_column",
               "prompt": "prompt", "query": "query", "response": "response", "history": "history"}
TAG_KEYS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "system_tag": "system"}


@dataclass
class Source:
    """What a reader gives: the dialogues, the clean-up counts, the format used and whether it was detected."""
    dialogues: list
    stats: ReadStats
    format: str
    detected: bool
    files: list = field(default_factory=list)


def layout_for(fmt: str, columns: dict | None = None, tags: dict | None = None, where: str = "") -> Layout:
    """A built-in format, with the spec's column and tag names laid over it."""
    return overlay(FORMATS[fmt], columns, tags, where)


def overlay(layout: Layout, columns: dict | None = None, tags: dict | None = None, where: str = "") -> Layout:
    """`layout` with a dataset spec's column and tag names laid over it (the spec's key names)."""
    changes = {}
    for key, value in (columns or {}).items():
        if key not in COLUMN_KEYS:
            raise PsyDTError(f"{where}columns 里的 {key!r} 不认识，可用：{', '.join(COLUMN_KEYS)}。")
        changes[COLUMN_KEYS[key]] = value
    for key, value in (tags or {}).items():
        if key not in TAG_KEYS:
            raise PsyDTError(f"{where}tags 里的 {key!r} 不认识，可用：{', '.join(TAG_KEYS)}。")
        if key.endswith("_tag") and key not in ("role_tag", "content_tag"):
            value = tuple([value] if isinstance(value, str) else value)
        changes[TAG_KEYS[key]] = value
    return replace(layout, **changes)


# -- files -----------------------------------------------------------------------------------------------
def _natural(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def source_files(path) -> list[Path]:
    """The data files of a source: the file itself, or every data file under a folder (hidden ones skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PsyDTError(f"找不到数据 {path}（既不是文件也不是文件夹）。")
    files = sorted((p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)), key=_natural)
    if not files:
        raise PsyDTError(f"文件夹 {path} 里没有数据文件（{' / '.join(SUFFIXES)}）。")
    return files


def _is_one_dialogue(records: list) -> bool:
    """A file whose top level is one dialogue: a list of strings, or of turn objects (no dialogue-level key)."""
    if all(isinstance(r, str) for r in records):
        return True
    return all(isinstance(r, dict) and "content" in r and "messages" not in r and "conversations" not in r
               for r in records)


def raw_records(file: Path, root: Path | None = None) -> list[tuple[object, str, str | None]]:
    """(record, where, id) of one file; `where` names the file and the record for error messages, the id
    is the file's path under `root` where the whole file is one dialogue."""
    suffix = file.suffix.lower()
    name = str(file.relative_to(root)) if root is not None and root.is_dir() else file.name
    if suffix in TEXT_SUFFIXES:
        try:
            return [(file.read_text("utf-8-sig"), f"文件 {file}", name)]
        except UnicodeDecodeError:
            raise PsyDTError(f"数据文件 {file} 不是 UTF-8 编码。请把文件另存为 UTF-8。") from None
    if suffix in TABLE_SUFFIXES:
        records = _table_records(file, TABLE_SUFFIXES[suffix])
    else:
        records = load_records(file)
        if not isinstance(records, list):
            raise PsyDTError(f"数据文件 {file} 的顶层必须是记录列表。")
        if records and _is_one_dialogue(records):
            return [(records, f"文件 {file}（整个文件是一段对话）", name)]
    return [(r, where_is(file, i, r), None) for i, r in enumerate(records)]


def _table_records(file: Path, builder: str) -> list:
    import datasets

    datasets.disable_progress_bars()
    try:
        if builder == "arrow":
            try:
                return datasets.Dataset.from_file(str(file)).to_list()  # the stream format `datasets` writes
            except Exception:  # noqa: BLE001  (pyarrow's errors vary) -- the other Arrow layout, Feather v2
                import pyarrow.feather as feather

                return feather.read_table(str(file)).to_pylist()
        reader = datasets.Dataset.from_parquet if builder == "parquet" else datasets.Dataset.from_csv
        return reader(str(file), keep_in_memory=True).to_list()
    except Exception as err:  # a broken table file: say which one, not a pyarrow traceback
        raise PsyDTError(f"无法读取数据文件 {file}（{builder}）：{type(err).__name__}: {err}") from None


# -- detecting -------------------------------------------------------------------------------------------
def detect_format(record) -> tuple[str | None, str]:
    """(format name or None, the evidence in words) of one record."""
    if isinstance(record, str):
        return "cpsycound", "纯文本"
    if isinstance(record, dict):
        for fmt, key in (("messages", "messages"), ("sharegpt", "conversations")):
            if key in record:
                return fmt, f"字段 \"{key}\""
        if "instruction" in record and "output" in record:
            return "alpaca", "字段 \"instruction\" / \"output\""
        return None, f"字段 {sorted(record)[:8]}"
    if isinstance(record, list) and record:
        first = record[0]
        if isinstance(first, str):
            for fmt in ("cpsycoune", "cpsycound"):
                if _speaker(first, FORMATS[fmt]):
                    return fmt, f"以 {first[:first.find('：') + 1 or 4]!r} 开头的句子"
            return None, f"第一句以 {first[:6]!r} 开头"
        if isinstance(first, dict):
            roles = {t.get("role") for t in record if isinstance(t, dict)}
            if roles <= {"client", "counselor"}:
                return "smilechat", "client / counselor 角色"
            if roles <= {"system", "user", "assistant"}:
                return "messages", "user / assistant 角色"
            return None, f"角色 {sorted(map(str, roles))[:6]}"
    return None, f"{type(record).__name__}"


def _check_same_format(records, fmt: str, evidence: str, path) -> None:
    first_where = records[0][1]
    for record, where, _ in records[1:]:
        other, why = detect_format(record)
        if other != fmt:
            raise PsyDTError(f"{where}：格式是 {other or '无法识别'}（{why}），而 {first_where} 是 {fmt}（{evidence}）。"
                             f"同一份数据 {path} 里不能混用两种格式，请拆成两个数据集。")


# -- reading ---------------------------------------------------------------------------------------------
def read_source(path, fmt: str = "auto", layout: Layout | None = None, limit: int | None = None,
                source: str | None = None, files: list | None = None) -> Source:
    """Read a file or folder in `fmt` ("auto": detected, and the same for every record); `limit` keeps the
    first N dialogues. `layout` (from a dataset spec) replaces the format's built-in one; `files` reads only
    those files of the folder `path`."""
    files = files or source_files(path)
    records = [r for f in files for r in raw_records(f, Path(path))]
    if not records:
        raise PsyDTError(f"数据 {path} 不含任何记录。")
    detected = fmt == "auto"
    if detected:
        fmt, evidence = detect_format(records[0][0])
        if fmt is None:
            raise PsyDTError(f"{records[0][1]}：认不出数据格式（{evidence}）。支持 {', '.join(FORMATS)}；"
                             "其他形状请写一个数据集说明（--dataset_spec，见 README 的“数据”一节）声明列名和角色标签。")
        _check_same_format(records, fmt, evidence, path)
    if limit is not None and limit > 0:
        records = records[:limit]
    layout = layout or FORMATS[fmt]
    stats = ReadStats(records=len(records))
    read = {"turns": turns_of, "alpaca": _from_alpaca, "prefixed": partial(_from_prefixed, stats=stats)}[layout.kind]
    dialogues = []
    for index, (record, where, file_id) in enumerate(records):
        rid, tag, turns = read(record, where, layout)
        dialogues.append(to_dialogue(where, index, file_id if rid is None else rid, tag, turns, stats, source=source))
    return Source(dialogues, stats, fmt, detected, files)


def role_of(tag, layout: Layout, where: str, field_name: str) -> str:
    for role in ("user", "assistant", "system"):
        if tag in getattr(layout, role):
            return role
    known = " / ".join(f"{t}（{r}）" for r in ("user", "assistant", "system") for t in getattr(layout, r))
    raise PsyDTError(f"{where}：{field_name} 是 {tag!r}，不是认识的角色标签。可用的标签：{known}"
                     "（别的标签请在数据集说明的 tags 里声明）。")


def field_of(record, name, where, kind=str, required=True):
    if not isinstance(record, dict):
        raise PsyDTError(f"{where}：记录必须是 JSON 对象，实际是 {type(record).__name__}。")
    if name not in record or record[name] is None:
        if required:
            raise PsyDTError(f"{where}：缺少字段 \"{name}\"。")
        return None
    value = record[name]
    if kind is list and isinstance(value, str) and value.lstrip().startswith("["):
        try:  # CSV cells hold lists as JSON text
            value = json.loads(value)
        except ValueError:
            pass
    if not isinstance(value, kind):
        raise PsyDTError(f"{where}：字段 \"{name}\" 必须是{'列表' if kind is list else '字符串'}，"
                         f"实际是 {type(value).__name__}。")
    return value


def _meta(record, layout: Layout):
    if not isinstance(record, dict):
        return None, None
    tag = record.get(layout.tag_column) if layout.tag_column else None
    return (record.get(layout.id_column) if layout.id_column else None), (tag if isinstance(tag, str) else None)


def system_turn(record, layout: Layout, where):
    text = field_of(record, layout.system_column, where, required=False) if layout.system_column else None
    return [("system", text, layout.system_column)] if text and text.strip() else []


def turns_of(record, where, layout: Layout):
    bare = layout.turns is None or isinstance(record, list)  # the record is the turn list itself
    name = "" if bare else layout.turns
    items = record if bare else field_of(record, layout.turns, where, list)
    if not isinstance(items, list):
        raise PsyDTError(f"{where}：一段对话必须是轮次的列表，实际是 {type(items).__name__}。")
    turns = [] if bare else system_turn(record, layout, where)
    for j, t in enumerate(items):
        field_name = f"{name}[{j}]"
        if not isinstance(t, dict):
            raise PsyDTError(f"{where}：{field_name} 必须是含 \"{layout.role}\" 和 \"{layout.content}\" 的对象。")
        role = role_of(t.get(layout.role), layout, where, f"{field_name}.{layout.role}")
        turns.append((role, t.get(layout.content, MISSING), f"{field_name}.{layout.content}"))
    return (*_meta(record, layout), turns)


def _from_alpaca(record, where, layout: Layout):
    rid, tag, turns = alpaca_context(record, where, layout)
    return rid, tag, turns + [("assistant", record.get(layout.response, MISSING), layout.response)]


def alpaca_context(record, where, layout: Layout):
    """An alpaca record's turns up to and with the instruction (+ input): system, history, the user turn."""
    prompt = field_of(record, layout.prompt, where)
    query = field_of(record, layout.query, where, required=False)
    turns = system_turn(record, layout, where)
    for j, pair in enumerate(field_of(record, layout.history, where, list, required=False) or []):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise PsyDTError(f"{where}：{layout.history}[{j}] 必须是 [提问, 回答] 两项的列表。")
        turns += [("user", pair[0], f"{layout.history}[{j}][0]"), ("assistant", pair[1], f"{layout.history}[{j}][1]")]
    turns.append(("user", "\n".join(p for p in (prompt, query) if p), layout.prompt))  # LLaMA-Factory's join
    return (*_meta(record, layout), turns)


def _speaker(text: str, layout: Layout):
    """(role, rest of the text) when `text` starts with one of the layout's speaker tags and a colon."""
    for role in ("user", "assistant", "system"):
        for tag in getattr(layout, role):
            for colon in ("：", ":"):
                if text.startswith(tag + colon):
                    return role, text[len(tag) + len(colon):].strip()
    return None


# a whole line in one pair of brackets: a transcript's stage direction, not something anyone said
STAGE_DIRECTION = re.compile(r"[（(][^（）()]*[）)]|【[^【】]*】|\[[^\[\]]*\]")


def is_stage_direction(text: str, said) -> bool:
    """A line wholly in brackets: untagged, a stage direction; after a speaker's tag only when it describes
    (（点头）) rather than says -- a bracketed line in the first person (来访者：（我不想活了）) is speech, kept."""
    if said is None:
        return bool(STAGE_DIRECTION.fullmatch(text))
    return bool(STAGE_DIRECTION.fullmatch(said[1])) and "我" not in said[1]


def _from_prefixed(record, where, layout: Layout, stats: ReadStats | None = None):
    """The turns of a transcript: raw text (a tagged line starts a turn, untagged lines continue it) or a list
    of tagged strings; stage directions dropped (counted in `stats`)."""
    if isinstance(record, str):
        units, name = [], "第 {} 行"
        for lineno, line in enumerate(record.splitlines(), start=1):
            if line.strip():
                units.append((lineno, line.strip()))
    elif isinstance(record, list):
        units, name = list(enumerate(record)), "[{}]"
    else:
        raise PsyDTError(f"{where}：一段对话必须是文本或句子的列表，实际是 {type(record).__name__}。")
    turns = []
    for pos, text in units:
        if not isinstance(text, str):
            raise PsyDTError(f"{where}：{name.format(pos)} 必须是字符串，实际是 {type(text).__name__}。")
        said = _speaker(text.strip(), layout)
        if is_stage_direction(text.strip(), said):
            if stats is not None:
                stats.stage_directions += 1
            continue
        if said is None and isinstance(record, str) and turns:
            role, content, field_name = turns[-1]
            turns[-1] = (role, f"{content}\n{text}", field_name)
            continue
        if said is None:
            tags = " / ".join(f"{t}：" for r in ("user", "assistant") for t in getattr(layout, r))
            raise PsyDTError(f"{where}：{name.format(pos)} 以 {text[:8]!r} 开头，不是认识的说话人（应以 {tags} 开头）。")
        turns.append((said[0], said[1], name.format(pos)))
    return None, None, turns
