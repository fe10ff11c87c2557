"""Preference pairs: one context (chat messages ending on the client's turn), a chosen and a rejected reply.

The published layouts, detected per record (every record of one source must be in the same one):

    trl        TRL: {"prompt", "chosen", "rejected"}; conversational (prompt a list of messages, chosen /
               rejected one-message lists [{"role": "assistant", "content"}]) or plain text (three strings:
               the prompt is one client turn); and TRL's implicit prompt: no "prompt", chosen and rejected are
               whole conversations that share everything up to their last (assistant) message
    sharegpt   LLaMA-Factory ranking: {"conversations": [{"from", "value"}], "chosen": {"from": "gpt", "value"},
               "rejected": {...}, "system"?}
    messages   the same with OpenAI turns: {"messages": [{"role", "content"}], "chosen": {...}, "rejected": {...}}
    alpaca     LLaMA-Factory ranking, alpaca-style: {"instruction", "input"?, "chosen": str, "rejected": str,
               "system"?, "history"?}
    swift      ms-swift: {"messages": [... ending with the chosen assistant reply], "rejected_response": str}

Any other shape is read through a dataset spec entry (data.datasets' spec: `format` one of the above, `columns`
-- messages, system, prompt, query, history, chosen, rejected -- and `tags`, as for dialogues). Files are
JSON, JSON Lines, Parquet, CSV or Arrow, read as data.formats reads dialogue files. An optional "origin" object
in a record (as `psydt-judge pairs` writes) is kept as the pair's provenance.

Every pair is checked before anything is written or loaded: the context's roles, a context that ends on a
client (user) turn, both replies present, strings, non-empty and different -- a PsyDTError names the file, the
record and the field. Think blocks are removed from assistant text, as the dialogue readers do.

The API the training CLI calls:

    pair_entries(train_files, spec_file, max_items) -> list[DatasetEntry]      # checked, nothing read yet
    build_pair_mix(entries, *, hub, seed, system_prompt, val_size, fetch, say) -> PairMix
        PairMix.train / .heldout: list[Preference]; .rows: one dict of counts per dataset
    read_preferences(path, fmt="auto", layout=None, limit=None) -> list[Preference]   # one file or folder

The mix, as for dialogues (data.datasets): each dataset's first `max_items` records; the system prompt
(the entry's, else --system_prompt) added to contexts without one; exact duplicate pairs dropped across and
within datasets; a seeded held-out share BY PROMPT (--val_size counts prompts -- the context's turns whatever
the system prompt -- and every pair of a held-out prompt is held out, so no prompt is on both sides); then
each weight applied to the remaining pairs.
"""
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from psydt_lora.data.datasets import (DatasetEntry, check_common, entries_from_args, heldout_count, locate,
                                      weigh)
from psydt_lora.data.dialogues import MISSING
from psydt_lora.data.formats import (FORMATS, Layout, alpaca_context, field_of, overlay, raw_records, role_of,
                                     source_files, turns_of)
from psydt_lora.errors import PsyDTError
from psydt_lora.prompt import strip_think


@dataclass(frozen=True)
class Preference:
    messages: tuple[dict, ...]  # the context: an optional system message, then user/assistant, ending on a user turn
    chosen: str  # the preferred counsellor reply (non-empty, think blocks removed)
    rejected: str  # the dispreferred reply (non-empty, != chosen)
    where: str  # "<file>#<record index>" for messages
    origin: dict = field(default_factory=dict)  # provenance when the record has it (judge, rubric, scores), else {}


@dataclass(frozen=True)
class PairLayout:
    """Where a pair layout keeps its context and its two replies. kind: "trl", "ranking" (a turn list +
    chosen / rejected turn objects), "alpaca" or "swift"; `turns` reads turn lists (data.formats.Layout)."""
    kind: str
    turns: Layout
    chosen: str = "chosen"
    rejected: str = "rejected"


PAIR_FORMATS = {
    "trl": PairLayout("trl", Layout("turns", "prompt", user=("user",), assistant=("assistant",), prompt="prompt")),
    "sharegpt": PairLayout("ranking", FORMATS["sharegpt"]),
    "messages": PairLayout("ranking", replace(FORMATS["messages"], system_column="system", tag_column=None)),
    "alpaca": PairLayout("alpaca", FORMATS["alpaca"]),
    "swift": PairLayout("swift", replace(FORMATS["messages"], tag_column=None), rejected="rejected_response"),
}
PAIR_FORMAT_NAMES = ("auto", *PAIR_FORMATS)
PAIR_COLUMN_KEYS = ("chosen", "rejected")  # beside data.formats' column keys (messages, system, prompt, ...)


@dataclass
class PairStats:
    records: int = 0
    think_blocks_removed: int = 0


@dataclass
class PairSource:
    pairs: list
    stats: PairStats
    format: str
    detected: bool


@dataclass
class PairMix:
    train: list  # Preference, weights applied
    heldout: list  # Preference, no prompt of them in train
    rows: list = field(default_factory=list)  # one dict of counts per dataset
    duplicates: int = 0


# -- which datasets ------------------------------------------------------------------------------------
def pair_layout_for(fmt: str, columns: dict | None = None, tags: dict | None = None, where: str = "") -> PairLayout:
    """A pair format with a spec's column and tag names laid over it."""
    layout, columns = PAIR_FORMATS[fmt], dict(columns or {})
    replies = {key: columns.pop(key) for key in PAIR_COLUMN_KEYS if key in columns}
    return replace(layout, turns=overlay(layout.turns, columns, tags, where), **replies)


def check_pair_entry(e: DatasetEntry) -> None:
    """A spec entry of preference pairs, checked without reading its data."""
    check_common(e, PAIR_FORMAT_NAMES)
    if e.format != "auto":
        pair_layout_for(e.format, e.columns, e.tags, where=f"{e.where}：")


def pair_entries(train_files, spec_file, max_items) -> list[DatasetEntry]:
    """The pair datasets named by --train_file values and --dataset_spec (as for dialogues)."""
    return entries_from_args(train_files, spec_file, max_items, check=check_pair_entry)


# -- detecting -----------------------------------------------------------------------------------------
def detect_pair_format(record) -> tuple[str | None, str]:
    """(pair format name or None, the evidence in words) of one record."""
    if not isinstance(record, dict):
        return None, type(record).__name__
    if "rejected_response" in record and "messages" in record:
        return "swift", "字段 \"messages\" / \"rejected_response\""
    if "chosen" in record and "rejected" in record:
        for fmt, key in (("sharegpt", "conversations"), ("messages", "messages"), ("alpaca", "instruction")):
            if key in record:
                return fmt, f"字段 \"{key}\" / \"chosen\" / \"rejected\""
        return "trl", "字段 \"prompt\" / \"chosen\" / \"rejected\"" if "prompt" in record else "字段 \"chosen\" / \"rejected\"（隐式提示）"
    return None, f"字段 {sorted(map(str, record))[:8]}"


def _records(files, path) -> list:
    records = []
    for f in files:
        if f.suffix.lower() == ".txt":
            raise PsyDTError(f"偏好数据文件 {f}：纯文本不是偏好对的格式（需要 JSON / JSONL / Parquet / CSV / Arrow）。")
        records += [(r, where, f, i) for i, (r, where, _) in enumerate(raw_records(f, Path(path)))]
    if not records:
        raise PsyDTError(f"偏好数据 {path} 不含任何记录。")
    return records


def _detected_format(records, path) -> str:
    first, first_where = records[0][0], records[0][1]
    fmt, evidence = detect_pair_format(first)
    if fmt is None:
        raise PsyDTError(f"{first_where}：认不出偏好数据的格式（{evidence}）。支持 {', '.join(PAIR_FORMATS)}（见 README 的"
                         "“偏好数据格式”）；其他形状请写一个数据集说明（--dataset_spec）声明列名和角色标签。")
    for record, where, _, _ in records[1:]:
        other, why = detect_pair_format(record)
        if other is not None and other != fmt:  # unrecognised: read as `fmt`, so the missing field is named
            raise PsyDTError(f"{where}：格式是 {other or '无法识别'}（{why}），而 {first_where} 是 {fmt}（{evidence}）。"
                             f"同一份偏好数据 {path} 里不能混用两种格式，请拆成两个数据集。")
    return fmt


# -- reading -------------------------------------------------------------------------------------------
def read_pair_source(path, fmt: str = "auto", layout: PairLayout | None = None, limit: int | None = None,
                     files: list | None = None) -> PairSource:
    """Read a file or folder of pairs in `fmt` ("auto": detected, the same for every record); `limit` keeps the
    first N records; `layout` (from a spec) replaces the format's own; `files` reads only those of the folder."""
    records = _records(files or source_files(path), path)
    detected = fmt == "auto"
    if detected:
        fmt = _detected_format(records, path)
    if limit is not None and limit > 0:
        records = records[:limit]
    layout = layout or PAIR_FORMATS[fmt]
    stats = PairStats(records=len(records))
    pairs = [to_preference(record, where, f"{file}#{index}", layout, stats) for record, where, file, index in records]
    return PairSource(pairs, stats, fmt, detected)


def read_preferences(path, fmt: str = "auto", layout: PairLayout | None = None, limit: int | None = None) -> list[Preference]:
    """The pairs of one file or folder, layout detected per record (the contract's reader)."""
    return read_pair_source(path, fmt, layout, limit).pairs


def to_preference(record, where: str, at: str, layout: PairLayout, stats: PairStats) -> Preference:
    """One record as a Preference, checked (see the module docstring)."""
    if not isinstance(record, dict):
        raise PsyDTError(f"{where}：记录必须是 JSON 对象，实际是 {type(record).__name__}。")
    read = {"trl": _trl, "ranking": _ranking, "alpaca": _alpaca, "swift": _swift}[layout.kind]
    turns, chosen, rejected = read(record, where, layout)
    messages = _context(turns, where, stats)
    chosen = _reply(chosen, where, stats)
    rejected = _reply(rejected, where, stats)
    if chosen[0] == rejected[0]:
        raise PsyDTError(f"{where}：{rejected[1]} 与 {chosen[1]} 完全相同——一对偏好数据的两条回复必须不同。")
    origin = record.get("origin", {})
    if origin is None:
        origin = {}
    if not isinstance(origin, dict):
        raise PsyDTError(f"{where}：字段 \"origin\" 必须是对象，实际是 {type(origin).__name__}。")
    return Preference(tuple(messages), chosen[0], rejected[0], at, origin)


def _context(turns, where: str, stats: PairStats) -> list[dict]:
    """The context's turns (role, content, field name) checked and cleaned: strings, system first only, no two
    counsellor turns in a row, think blocks removed, ending on a client turn."""
    clean = []
    for j, (role, content, name) in enumerate(turns):
        if not isinstance(content, str):
            what = "缺失" if content is MISSING else f"类型是 {type(content).__name__}"
            raise PsyDTError(f"{where}：{name} 必须是字符串（{what}）。")
        if role == "system" and j != 0:
            raise PsyDTError(f"{where}：{name} 是 system 消息，但 system 只能是第一条消息。")
        if role == "assistant" and clean and clean[-1]["role"] == "assistant":
            raise PsyDTError(f"{where}：{name} 是咨询师的回复，紧跟在另一条咨询师回复之后——回复之间必须有来访者的发言。")
        if role == "assistant" and ("<think>" in content or "</think>" in content):
            content = strip_think(content)
            stats.think_blocks_removed += 1
        clean.append({"role": role, "content": content})
    if not clean or clean[-1]["role"] != "user":
        last = f"最后一条 {turns[-1][2]} 是 {clean[-1]['role']}" if clean else "上下文是空的"
        raise PsyDTError(f"{where}：上下文必须以来访者（user）的发言结尾，两条回复都是对它的回答；{last}。")
    return clean


def _reply(reply, where: str, stats: PairStats) -> tuple[str, str]:
    """(text, field name) of a chosen / rejected reply given as (value, field name): a non-empty string."""
    value, name = reply
    if value is MISSING or value is None:
        raise PsyDTError(f"{where}：缺少 {name}。")
    if not isinstance(value, str):
        raise PsyDTError(f"{where}：{name} 必须是字符串，实际是 {type(value).__name__}。")
    if "<think>" in value or "</think>" in value:
        value = strip_think(value)
        stats.think_blocks_removed += 1
    if not value.strip():
        raise PsyDTError(f"{where}：{name} 是空的——偏好对的两条回复都必须有内容。")
    return value, name


# -- the layouts: each gives (context turns, (chosen, field), (rejected, field)) -----------------------
def _trl(record, where, layout: PairLayout):
    prompt = layout.turns.prompt  # the spec's columns.prompt
    if prompt in record and record[prompt] is not None:
        if isinstance(record[prompt], str):  # plain text: the prompt is one client turn
            turns = [("user", record[prompt], prompt)]
        else:
            turns = turns_of(record, where, replace(layout.turns, turns=prompt))[2]
        return turns, _one_reply(record, layout.chosen, where, layout), _one_reply(record, layout.rejected, where, layout)
    return _implicit(record, where, layout)


def _one_reply(record, key, where, layout: PairLayout):
    """TRL's completion: a string, or a list holding one assistant message."""
    value = record.get(key, MISSING)
    if isinstance(value, list):
        if len(value) != 1:
            raise PsyDTError(f"{where}：字段 \"{key}\" 必须是只含一条 assistant 回复的列表，实际有 {len(value)} 条。")
        return _turn_reply(value[0], f"{key}[0]", where, layout.turns)
    return value, key


def _turn_reply(turn, name, where, layout: Layout):
    """A reply given as a turn object: its role must be the counsellor's."""
    if isinstance(turn, str):
        return turn, name
    if not isinstance(turn, dict):
        raise PsyDTError(f"{where}：{name} 必须是含 \"{layout.role}\" 和 \"{layout.content}\" 的对象，实际是 "
                         f"{type(turn).__name__}。")
    role = role_of(turn.get(layout.role), layout, where, f"{name}.{layout.role}")
    if role != "assistant":
        raise PsyDTError(f"{where}：{name}.{layout.role} 是 {turn.get(layout.role)!r}，回复必须是咨询师（assistant）说的。")
    return turn.get(layout.content, MISSING), f"{name}.{layout.content}"


def _implicit(record, where, layout: PairLayout):
    """TRL's implicit prompt: chosen and rejected are whole conversations; the prompt is what they share."""
    sides = {}
    for key in (layout.chosen, layout.rejected):
        if key not in record or record[key] is None:
            raise PsyDTError(f"{where}：缺少字段 \"{key}\"（没有 \"{layout.turns.prompt}\" 时，{layout.chosen} / "
                             f"{layout.rejected} 必须是共享同一段上下文的两段完整对话）。")
        sides[key] = turns_of(record, where, replace(layout.turns, turns=key, system_column=None))[2]
    chosen, rejected = sides[layout.chosen], sides[layout.rejected]
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared][:2] == rejected[shared][:2]:
        shared += 1
    if shared == len(chosen) == len(rejected):
        raise PsyDTError(f"{where}：字段 \"{layout.rejected}\" 与 \"{layout.chosen}\" 完全相同——一对偏好数据的两条回复必须不同。")
    for key, turns in sides.items():
        if len(turns) - shared != 1 or turns[-1][0] != "assistant":
            raise PsyDTError(f"{where}：字段 \"{key}\" 必须是共享的上下文加上最后一条 assistant 回复（隐式提示）；"
                             f"它在第 {shared} 条之后还有 {len(turns) - shared} 条。")
    return chosen[:shared], chosen[-1][1:], rejected[-1][1:]


def _ranking(record, where, layout: PairLayout):
    turns = turns_of(record, where, layout.turns)[2]
    replies = [_turn_reply(record.get(key, MISSING), key, where, layout.turns) if key in record
               else (MISSING, f"字段 \"{key}\"") for key in (layout.chosen, layout.rejected)]
    return turns, *replies


def _alpaca(record, where, layout: PairLayout):
    turns = alpaca_context(record, where, layout.turns)[2]
    return turns, *((record.get(key, MISSING), key) for key in (layout.chosen, layout.rejected))


def _swift(record, where, layout: PairLayout):
    turns = turns_of(record, where, layout.turns)[2]
    if not turns or turns[-1][0] != "assistant":
        name = layout.turns.turns
        raise PsyDTError(f"{where}：{name} 的最后一条必须是被选中的回复（assistant），ms-swift 的格式把它放在那里；"
                         f"实际是 {turns[-1][0] if turns else '空列表'}。")
    return turns[:-1], turns[-1][1:], (record.get(layout.rejected, MISSING), layout.rejected)


# -- mixing --------------------------------------------------------------------------------------------
def prompt_key(p: Preference) -> str:
    """Equal for the same context turns, whatever the system prompt (the held-out split's unit)."""
    return json.dumps([(m["role"], m["content"]) for m in p.messages if m["role"] != "system"], ensure_ascii=False)


def pair_key(p: Preference) -> str:
    return json.dumps([prompt_key(p), p.chosen, p.rejected], ensure_ascii=False)


def with_system(p: Preference, prompt: str | None) -> Preference:
    """`p` with `prompt` as its system message when its context brings none ("" / None: unchanged)."""
    if not prompt or p.messages[0]["role"] == "system":
        return p
    return replace(p, messages=({"role": "system", "content": prompt}, *p.messages))


def read_pair_entry(e: DatasetEntry, hub: str, fetch=None):
    """(PairSource, where it was read from) of one pair dataset."""
    location, files = locate(e, hub, fetch)
    layout = pair_layout_for(e.format, e.columns, e.tags, where=f"{e.where}：") if e.format != "auto" else None
    return read_pair_source(location, e.format, layout, limit=e.max_items, files=files), location


def build_pair_mix(entries, *, hub: str = "modelscope", seed: int = 42, system_prompt: str | None = None,
                   val_size: float = 0, fetch=None, say=print) -> PairMix:
    """Read every pair dataset and mix them as the module docstring says."""
    kept, rows, seen, duplicates = [], [], set(), 0
    for e in entries:
        source, location = read_pair_entry(e, hub, fetch)
        prompt = e.system_prompt if e.system_prompt is not None else system_prompt
        pairs, mine = [with_system(p, prompt) for p in source.pairs], []
        for p in pairs:
            if pair_key(p) not in seen:
                seen.add(pair_key(p))
                mine.append(p)
        duplicates += len(pairs) - len(mine)
        kept.append(mine)
        rows.append({"name": e.name, "location": str(location), "format": source.format, "detected": source.detected,
                     "records": source.stats.records, "duplicates_dropped": len(pairs) - len(mine),
                     "system_prompt_added": sum(a is not b for a, b in zip(pairs, source.pairs)),
                     "think_blocks_removed": source.stats.think_blocks_removed})
    held = heldout_prompts([p for mine in kept for p in mine], val_size, seed)
    train, heldout = [], []
    for e, row, mine in zip(entries, rows, kept):
        out = [p for p in mine if prompt_key(p) in held]
        mine = [p for p in mine if prompt_key(p) not in held]
        if not mine:
            raise PsyDTError(f"{e.where}：去重{'和留出验证集' if out else ''}之后没有剩下可训练的偏好对"
                             f"（读到 {row['records']} 条，重复 {row['duplicates_dropped']} 条，留出 {len(out)} 条）。")
        weighted = weigh(mine, e.weight, f"{seed}:{e.name}")
        if not weighted:
            raise PsyDTError(f"{e.where}：weight {e.weight:g} 乘以 {len(mine)} 个偏好对不到半个，这个数据集一对也不会参与训练。"
                             f"请把 weight 调大到至少 {0.5 / len(mine):.3g}，或去掉这个数据集。")
        row.update(heldout=len(out), weight=e.weight, pairs=len(weighted))
        train += weighted
        heldout += out
    for row in rows:
        say(describe_pairs(row))
    return PairMix(train, heldout, rows, duplicates)


def heldout_prompts(pairs: list[Preference], val_size: float, seed: int) -> set:
    """The prompts (prompt_key) held out: --val_size of the distinct prompts, seeded."""
    prompts = list(dict.fromkeys(prompt_key(p) for p in pairs))  # first seen first
    n = heldout_count(len(prompts), val_size, unit="个提示（上下文）")
    return set(random.Random(f"heldout:{seed}").sample(prompts, n)) if n else set()


def describe_pairs(row: dict) -> str:
    how = "自动识别" if row["detected"] else "指定"
    extra = f"，加上系统提示词 {row['system_prompt_added']} 条" if row["system_prompt_added"] else ""
    return (f"[偏好数据] {row['name']}（{row['location']}）：格式 {row['format']}（{how}），读到 {row['records']} 个偏好对，"
            f"重复丢弃 {row['duplicates_dropped']}，留出验证 {row['heldout']}，权重 {row['weight']:g} → 训练 "
            f"{row['pairs']} 对{extra}")
