"""Reading and validating PsyDTCorpus-style dialogue files.

A file is a JSON array (or JSON Lines) of records
    {"id": ..., "normalizedTag": ..., "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}

Rules for oddities that are not errors (counted in `ReadStats`, said in the run summary):
  * consecutive turns of one speaker (two counsellor utterances in a row, as transcripts such as CPsyCounD
    have them around a stage direction) are merged into one turn, joined by a line break;
  * trailing user turns (a dialogue that ends with the client speaking) are dropped: no reply to learn;
  * an assistant reply that is empty or only whitespace is kept as context but is never a target;
  * a `<think>...</think>` block inside an assistant reply is removed (the corpus has none; Qwen3 drops
    them from history anyway, and we train the non-thinking mode).
Everything else that is malformed stops with a PsyDTError naming the file, the record and the field.
Messages count records (and lines) from 1, as the user does; `Dialogue.index` stays 0-based.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.files import load_records
from psydt_lora.prompt import strip_think

ROLES = ("system", "user", "assistant")


@dataclass
class Dialogue:
    index: int  # position of the record in its file (0-based)
    id: object  # the record's "id", as given (may be None)
    tag: str | None  # the record's "normalizedTag"
    messages: list[dict]  # [{"role", "content"}], validated and cleaned
    source: str | None = None  # the dataset it came from, when several are mixed

    def targets(self) -> list[int]:
        """Indices of the assistant messages that are training targets."""
        seen_user = False
        out = []
        for i, m in enumerate(self.messages):
            if m["role"] == "user":
                seen_user = True
            elif m["role"] == "assistant" and seen_user and m["content"].strip():
                out.append(i)
        return out


@dataclass
class ReadStats:
    records: int = 0
    dropped_trailing_user_turns: int = 0
    empty_replies: int = 0
    think_blocks_removed: int = 0
    merged_turns: int = 0  # turns joined to the one before them (the same speaker again)
    stage_directions: int = 0  # transcript lines that are a stage direction, dropped (data/formats.py)

    def as_dict(self) -> dict:
        return {
            "records": self.records,
            "dropped_trailing_user_turns": self.dropped_trailing_user_turns,
            "empty_replies_not_trained": self.empty_replies,
            "think_blocks_removed": self.think_blocks_removed,
            "same_speaker_turns_merged": self.merged_turns,
            "stage_directions_dropped": self.stage_directions,
        }


TIDY_WORDS = {  # as_dict key -> how the run summary says it
    "same_speaker_turns_merged": "同一人连续的发言合并 {} 处",
    "stage_directions_dropped": "去掉舞台说明（整行括号）{} 行",
    "dropped_trailing_user_turns": "去掉结尾的来访者发言 {} 条",
    "empty_replies_not_trained": "空回复（不训练）{} 条",
    "think_blocks_removed": "去掉 think 块 {} 处",
}


def tidy_summary(counts: dict) -> str:
    """The clean-ups of a ReadStats.as_dict() (or a dataset row holding its keys) in words; "" when none."""
    return "，".join(words.format(counts[key]) for key, words in TIDY_WORDS.items() if counts.get(key))


def where_is(path, index, record=None) -> str:
    """A record of a file for messages: `index` 0-based, said from 1."""
    rid = ""
    if isinstance(record, dict) and "id" in record:
        rid = f"（id={record['id']!r}）"
    return f"文件 {path} 第 {index + 1} 条记录{rid}"


def _validate(path, index, record, stats: ReadStats) -> Dialogue:
    where = where_is(path, index, record)
    if not isinstance(record, dict):
        raise PsyDTError(f"{where}：记录必须是 JSON 对象，实际是 {type(record).__name__}。")
    if "messages" not in record:
        raise PsyDTError(f"{where}：缺少字段 \"messages\"。")
    messages = record["messages"]
    if not isinstance(messages, list):
        raise PsyDTError(f"{where}：字段 \"messages\" 必须是列表，实际是 {type(messages).__name__}。")
    tag = record.get("normalizedTag")
    if tag is not None and not isinstance(tag, str):
        raise PsyDTError(f"{where}：字段 \"normalizedTag\" 必须是字符串。")
    turns = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            raise PsyDTError(f"{where}：messages[{j}] 必须是 {{\"role\", \"content\"}} 对象。")
        role = m.get("role")
        if role not in ROLES:
            raise PsyDTError(f"{where}：messages[{j}].role 是 {role!r}，只允许 system / user / assistant。")
        turns.append((role, m.get("content", MISSING), f"messages[{j}].content"))
    return to_dialogue(where, index, record.get("id"), tag, turns, stats)


MISSING = object()


def to_dialogue(where: str, index: int, rid, tag, turns, stats: ReadStats, source: str | None = None) -> Dialogue:
    """The one dialogue every format becomes. `turns` are (role in ROLES, content, field name as the user's
    file spells it); the checks and clean-ups here are the same for every format."""
    clean = []
    for j, (role, content, field_name) in enumerate(turns):
        if not isinstance(content, str):
            what = "缺失" if content is MISSING else f"类型是 {type(content).__name__}"
            raise PsyDTError(f"{where}：{field_name} 必须是字符串（{what}）。")
        if role == "system" and j != 0:
            raise PsyDTError(f"{where}：{field_name} 是 system 消息，但 system 只能是第一条消息。")
        if role == "assistant" and ("<think>" in content or "</think>" in content):
            content = strip_think(content)
            stats.think_blocks_removed += 1
        if clean and clean[-1]["role"] == role:
            # inference always asks for a reply right after the client spoke: one speaker's run is one turn
            clean[-1]["content"] = "\n".join(c for c in (clean[-1]["content"], content) if c.strip())
            stats.merged_turns += 1
            continue
        clean.append({"role": role, "content": content})
    while clean and clean[-1]["role"] == "user":
        clean.pop()
        stats.dropped_trailing_user_turns += 1
    dialogue = Dialogue(index=index, id=rid, tag=tag, messages=clean, source=source)
    seen_user = False
    for m in clean:
        seen_user = seen_user or m["role"] == "user"
        if seen_user and m["role"] == "assistant" and not m["content"].strip():
            stats.empty_replies += 1
    if not dialogue.targets():
        raise PsyDTError(
            f"{where}：没有可以学习的回复——需要至少一条出现在 user 消息之后、内容非空的 assistant 消息。"
        )
    return dialogue


def read_dialogues(path, limit: int | None = None) -> tuple[list[Dialogue], ReadStats]:
    """Read and validate a dialogue file; `limit` (>0) keeps the first N records."""
    path = Path(path)
    records = load_records(path)
    if not isinstance(records, list):
        raise PsyDTError(f"数据文件 {path} 的顶层必须是记录列表。")
    if not records:
        raise PsyDTError(f"数据文件 {path} 不含任何记录。")
    if limit is not None and limit > 0:
        records = records[:limit]
    stats = ReadStats(records=len(records))
    dialogues = [_validate(path, i, r, stats) for i, r in enumerate(records)]
    return dialogues, stats


def group_prefix_items(items: list[Dialogue]) -> list[list[int]]:
    """Group single-turn-split items into dialogues: consecutive items where each one's
    messages extend the previous one's belong to the same dialogue. Returns lists of positions."""
    groups: list[list[int]] = []
    prev = None
    for pos, item in enumerate(items):
        msgs = item.messages
        if (
            prev is not None
            and len(msgs) > len(prev.messages)
            and msgs[: len(prev.messages)] == prev.messages  # ids are not relied on: files differ in how they set them
        ):
            groups[-1].append(pos)
        else:
            groups.append([pos])
        prev = item
    return groups


def looks_single_turn_split(items: list[Dialogue]) -> bool:
    """True for the test-file shape: consecutive items are growing prefixes of the same dialogue."""
    if len(items) < 3:
        return False
    groups = group_prefix_items(items)
    return len(groups) <= len(items) / 2


def check_format(items: list[Dialogue], path, expect_split: bool, flag: str) -> None:
    """Stop when a training file is given where the test split is expected, or the other way round."""
    split = looks_single_turn_split(items)
    if expect_split and not split and len(items) >= 3 and all(len(d.targets()) > 1 for d in items[:20]):
        raise PsyDTError(
            f"{flag} {path} 看起来是训练格式（每条是一整段多轮对话），而这里需要 single-turn split 测试格式"
            "（每条是截至某条回复的历史，最后一条是参考回复）。请换成 PsyDTCorpus_test_single_turn_split.json 这类文件。"
        )
    if not expect_split and split:
        raise PsyDTError(
            f"{flag} {path} 看起来是 single-turn split 测试格式（相邻记录是同一段对话逐渐变长的前缀），"
            "用它训练会把同一条回复学很多遍。请用 PsyDTCorpus_train_mulit_turn_packing.json 这类训练文件。"
        )


def _spread(n: int, k: int) -> list[int]:
    """k indices out of range(n), evenly spread and deterministic (k <= n)."""
    if k <= 0:
        return []
    if k == 1:
        return [n // 2]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


def select_spread(items: list[Dialogue], n: int | None) -> list[Dialogue]:
    """Pick n items of a single-turn-split file spread over as many distinct dialogues as possible.

    n <= 0 or None keeps everything. With n <= number of dialogues, n evenly spaced dialogues each
    give their middle item; otherwise every dialogue gives floor/ceil(n / dialogues) evenly spaced items.
    The result keeps file order.
    """
    if n is None or n <= 0 or n >= len(items):
        return list(items)
    groups = group_prefix_items(items)
    picked: list[int] = []
    if n <= len(groups):
        for g in _spread(len(groups), n):
            members = groups[g]
            picked.append(members[len(members) // 2])
    else:
        base, extra = divmod(n, len(groups))
        bonus = set(_spread(len(groups), extra))
        leftover = 0
        for gi, members in enumerate(groups):
            want = base + (1 if gi in bonus else 0) + leftover
            take = min(want, len(members))
            leftover = want - take  # short dialogues hand their quota to the next ones
            picked.extend(members[i] for i in _spread(len(members), take))
        if leftover:  # still short: fill from the remaining items in file order
            rest = [p for p in range(len(items)) if p not in set(picked)]
            picked.extend(rest[:leftover])
    return [items[p] for p in sorted(set(picked))]
