"""Reading and validating data files: clear Chinese errors naming file, record and field."""
import json

import pytest

from conftest import DIALOGUES, SHAPED_TEST, require, single_turn_split
from psydt_lora.data.dialogues import group_prefix_items, read_dialogues, select_spread
from psydt_lora.errors import PsyDTError


def write(tmp_path, obj, name="data.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False), "utf-8")
    return p


def test_json_array_and_json_lines_read_the_same(tmp_path):
    a, _ = read_dialogues(write(tmp_path, DIALOGUES))
    lines = "\n".join(json.dumps(d, ensure_ascii=False) for d in DIALOGUES) + "\n"
    b, _ = read_dialogues(write(tmp_path, lines, "data.jsonl"))
    assert [d.messages for d in a] == [d.messages for d in b] == [d["messages"] for d in DIALOGUES]
    assert [d.id for d in a] == ["d0", "d1"] and a[1].tag == "婚恋"


@pytest.mark.parametrize(
    "records, pattern",
    [
        (json.dumps({"messages": []}, indent=2), r"顶层必须是"),
        ([{"id": 7}], r"第 1 条记录（id=7）：缺少字段 \"messages\""),
        ([{"id": 1, "messages": "hi"}], r"字段 \"messages\" 必须是列表"),
        ([DIALOGUES[0], {"id": "x", "messages": [{"role": "bot", "content": "a"}]}], r"第 2 条记录（id='x'）：messages\[0\]\.role 是 'bot'"),
        ([{"messages": [{"role": "user", "content": 3}]}], r"messages\[0\]\.content 必须是字符串（类型是 int）"),
        ([{"messages": [{"role": "user"}]}], r"messages\[0\]\.content 必须是字符串（缺失）"),
        ([{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}], r"system 只能是第一条"),
        ([{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]}], r"没有可以学习的回复"),
        ([], r"不含任何记录"),
        (["just a string"], r"记录必须是 JSON 对象"),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, records, pattern):
    path = write(tmp_path, records)
    with pytest.raises(PsyDTError, match=pattern) as err:
        read_dialogues(path)
    assert str(path) in str(err.value)


def test_records_are_counted_from_one(tmp_path):
    bad = {"id": "c", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 5}]}
    with pytest.raises(PsyDTError, match=r"第 3 条记录（id='c'）：messages\[1\]\.content") as err:
        read_dialogues(write(tmp_path, [*DIALOGUES, bad]))
    assert "第 2 条" not in str(err.value)


def test_the_questions_and_safety_eval_files_count_items_from_one_too(tmp_path):
    from psydt_lora.evaluation.batch_run import read_questions
    from psydt_lora.safety.measurement import read_eval_cases

    with pytest.raises(PsyDTError, match=r"第 3 项必须是非空字符串"):
        read_questions(write(tmp_path, ["第一问", "第二问", " "], "q.json"))
    with pytest.raises(PsyDTError, match=r"的第 2 条需要非空字符串字段"):
        read_eval_cases(write(tmp_path, [{"text": "a", "risk": "low"}, {"text": "", "risk": "high"}], "s.json"))


@pytest.mark.parametrize("text, words", [
    ('[\n {"messages": []}\n {"messages": []}\n]', ["第 3 行第 2 列", "缺少逗号"]),
    ('[\n {"messages": [}\n]', ["第 2 行第 16 列", "应该是一个值"]),
    ('[{"id": "d0, "messages": []}]', ["第 1 行", "缺少逗号"]),
    ('[{"id": "d0}]', ["第 1 行第 9 列", "没有结束的双引号"]),
    ('[{"id": 1,}]', ["第 1 行第 11 列", "双引号括起来的字段名"]),
    ('[{"id": 1}] []', ["第 1 行第 13 列", "多余的内容"]),
    ('[{"id": "a\tb"}]', ["第 1 行第 11 列", "控制字符"]),
    ('[{"path": "C:\\data"}]', ["第 1 行第 14 列", "无效的转义"]),
    ('{"id": 1}\n{"id": 2} x\n', ["第 2 行不是合法的 JSON", "第 11 列", "多余的内容"]),
    ('{"id": 1}\n{"id" 2}\n', ["第 2 行不是合法的 JSON", "第 7 列", "缺少冒号"]),
])
def test_json_syntax_errors_are_said_in_chinese_with_line_and_column(tmp_path, text, words):
    path = write(tmp_path, text, "data.jsonl" if text.startswith("{") else "data.json")
    with pytest.raises(PsyDTError) as err:
        read_dialogues(path)
    message = str(err.value)
    for word in words:
        assert word in message, (word, message)
    english = ("Expecting", "delimiter", "Unterminated", "Extra data", "Invalid", "property name")
    assert not any(e in message for e in english), message


def test_a_bad_byte_is_named_by_line_and_counted_from_one(tmp_path):
    path = tmp_path / "gbk.json"
    path.write_bytes(b'[\n{"id": "\xc4\xe3"}]')
    with pytest.raises(PsyDTError, match=r"第 2 行、第 11 个字节处无法解码"):
        read_dialogues(path)


def test_broken_files_get_clear_errors(tmp_path):
    text = json.dumps(DIALOGUES, ensure_ascii=False)
    with pytest.raises(PsyDTError, match=r"不是合法的 JSON（第 1 行.*截断"):
        read_dialogues(write(tmp_path, text[: len(text) // 2]))
    broken = json.dumps(DIALOGUES[0], ensure_ascii=False) + "\n{\"messages\": [\n"
    with pytest.raises(PsyDTError, match=r"第 2 行不是合法的 JSON"):
        read_dialogues(write(tmp_path, broken, "x.jsonl"))
    bad = tmp_path / "gbk.json"
    bad.write_bytes(json.dumps(DIALOGUES, ensure_ascii=False).encode("gbk"))
    with pytest.raises(PsyDTError, match=r"不是 UTF-8 编码"):
        read_dialogues(bad)
    with pytest.raises(PsyDTError, match=r"找不到数据文件"):
        read_dialogues(tmp_path / "missing.json")
    with pytest.raises(PsyDTError, match=r"是空的"):
        read_dialogues(write(tmp_path, "  \n"))


def test_skippable_oddities_follow_the_stated_rules(tmp_path):
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "assistant", "content": "欢迎"},  # before any user turn: context only
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "  "},  # empty reply: context, not a target
        {"role": "user", "content": "在吗"},
        {"role": "assistant", "content": "<think>想一想</think>\n在的"},
        {"role": "user", "content": "再见"},  # trailing user turn: dropped
    ]
    (d,), stats = read_dialogues(write(tmp_path, [{"id": 0, "messages": msgs}]))
    assert d.targets() == [5]
    assert d.messages[5]["content"] == "在的"
    assert len(d.messages) == 6
    assert stats.as_dict() == {"records": 1, "dropped_trailing_user_turns": 1, "empty_replies_not_trained": 1,
                               "think_blocks_removed": 1, "same_speaker_turns_merged": 0, "stage_directions_dropped": 0}


def test_one_speaker_twice_in_a_row_is_one_turn_and_counted(tmp_path):
    msgs = [{"role": "user", "content": "我睡不着"}, {"role": "user", "content": "已经一周了"},
            {"role": "assistant", "content": "听起来很辛苦。"}, {"role": "assistant", "content": " "},
            {"role": "assistant", "content": "能说说睡前在想什么吗？"}, {"role": "user", "content": "工作"},
            {"role": "assistant", "content": "嗯。"}]
    (d,), stats = read_dialogues(write(tmp_path, [{"id": 0, "messages": msgs}]))
    assert d.messages == [{"role": "user", "content": "我睡不着\n已经一周了"},
                          {"role": "assistant", "content": "听起来很辛苦。\n能说说睡前在想什么吗？"},
                          {"role": "user", "content": "工作"}, {"role": "assistant", "content": "嗯。"}]
    assert d.targets() == [1, 3] and stats.merged_turns == 3 and stats.empty_replies == 0


def test_limit_takes_the_first_n(tmp_path):
    ds, stats = read_dialogues(write(tmp_path, DIALOGUES), limit=1)
    assert [d.id for d in ds] == ["d0"] and stats.records == 1


def test_select_spread_covers_distinct_dialogues_deterministically(tmp_path):
    items, _ = read_dialogues(write(tmp_path, single_turn_split(DIALOGUES * 3)))
    # DIALOGUES*3 repeats ids, but consecutive copies are not prefixes of each other: 6 dialogues
    groups = group_prefix_items(items)
    assert [len(g) for g in groups] == [2] * 6
    picked = select_spread(items, 3)
    assert len(picked) == 3
    assert len({next(i for i, g in enumerate(groups) if items.index(p) in g) for p in picked}) == 3
    assert [p.index for p in picked] == [p.index for p in select_spread(items, 3)]
    many = select_spread(items, 9)
    assert len(many) == 9 and len({p.index for p in many}) == 9
    assert select_spread(items, 0) == items and select_spread(items, -1) == items


def test_select_spread_on_shaped_test_file():
    items, _ = read_dialogues(require(SHAPED_TEST))
    groups = group_prefix_items(items)
    assert len(groups) == len({i.id for i in items})
    picked = select_spread(items, 10)
    assert len({p.id for p in picked}) == 10


def test_items_are_grouped_by_prefix_even_when_every_item_has_its_own_id(tmp_path):
    items = single_turn_split(DIALOGUES)
    for i, item in enumerate(items):
        item["id"] = f"item-{i}"
    read, _ = read_dialogues(write(tmp_path, items))
    assert [len(g) for g in group_prefix_items(read)] == [2, 2]
    assert len({p.messages[1]["content"] for p in select_spread(read, 2)}) == 2  # one from each dialogue
