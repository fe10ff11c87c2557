"""Preference pairs in the published layouts (TRL, LLaMA-Factory ranking, ms-swift, a dataset spec), the
bad-pair table, and mixing with a held-out split by prompt.

The pair files are written here from real counselling dialogues (../shared/assets/psydt-shaped) by the tests'
own writers, and every count is made from the raw files with json -- never through the reader under test."""
import json

import pytest

from conftest import SHAPED_TRAIN, require
from psydt_lora.data.pairs import build_pair_mix, pair_entries, read_pair_source, read_preferences
from psydt_lora.errors import PsyDTError
from psydt_lora.prompt import DEFAULT_SYSTEM

QUIET = dict(say=lambda *a: None)


def real_pairs(n_dialogues=12, rejected_per_prompt=1):
    """(context messages, chosen, rejected): the context up to a client turn of a real dialogue, its real
    reply chosen, another dialogue's reply at the same place rejected."""
    dialogues = [d["messages"] for d in json.loads(require(SHAPED_TRAIN).read_text("utf-8")) if len(d["messages"]) > 6]
    out = []
    for i, msgs in enumerate(dialogues[:n_dialogues]):
        for k in (1, 5):  # message index of a client turn
            for r in range(1, rejected_per_prompt + 1):
                rejected = dialogues[(i + r) % len(dialogues)][k + 1]["content"]
                out.append((msgs[: k + 1], msgs[k + 1]["content"], rejected))
    return out


def turns(ctx):
    return [m for m in ctx if m["role"] != "system"]


def system(ctx):
    return ctx[0]["content"] if ctx[0]["role"] == "system" else None


# -- the tests' own writers: one per published layout --------------------------------------------------
def trl_conversational(ctx, c, r):
    return {"prompt": ctx, "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}]}


def trl_plain(ctx, c, r):
    return {"prompt": ctx[-1]["content"], "chosen": c, "rejected": r}


def trl_implicit(ctx, c, r):
    return {"chosen": ctx + [{"role": "assistant", "content": c}], "rejected": ctx + [{"role": "assistant", "content": r}]}


def lf_sharegpt(ctx, c, r):
    tag = {"user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": tag[m["role"]], "value": m["content"]} for m in turns(ctx)], "system": system(ctx),
            "chosen": {"from": "gpt", "value": c}, "rejected": {"from": "gpt", "value": r}}


def lf_messages(ctx, c, r):
    return {"messages": ctx, "chosen": {"role": "assistant", "content": c}, "rejected": {"role": "assistant", "content": r}}


def lf_alpaca(ctx, c, r):
    t = turns(ctx)
    history = [[t[i]["content"], t[i + 1]["content"]] for i in range(0, len(t) - 1, 2)]
    return {"instruction": t[-1]["content"], "input": "", "history": history, "system": system(ctx),
            "chosen": c, "rejected": r}


def swift(ctx, c, r):
    return {"messages": ctx + [{"role": "assistant", "content": c}], "rejected_response": r}


LAYOUTS = {  # writer, the context the reader should give back
    "trl": (trl_conversational, lambda ctx: ctx),
    "trl_plain": (trl_plain, lambda ctx: [{"role": "user", "content": ctx[-1]["content"]}]),
    "trl_implicit": (trl_implicit, lambda ctx: ctx),
    "sharegpt": (lf_sharegpt, lambda ctx: ctx),
    "messages": (lf_messages, lambda ctx: ctx),
    "alpaca": (lf_alpaca, lambda ctx: ctx),
    "swift": (swift, lambda ctx: ctx),
}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def count_records(path):
    text = path.read_text("utf-8")
    return len(json.loads(text)) if path.suffix == ".json" else sum(1 for line in text.splitlines() if line.strip())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_published_layout_reads_back_every_pair(tmp_path, layout):
    write, expect_ctx = LAYOUTS[layout]
    data = real_pairs()
    path = write_jsonl(tmp_path / f"{layout}.jsonl", [write(*p) for p in data])
    source = read_pair_source(path)
    assert source.detected and source.format == layout.split("_")[0]
    pairs = source.pairs
    assert len(pairs) == count_records(path) == len(data)
    assert [(list(p.messages), p.chosen, p.rejected) for p in pairs] == [(expect_ctx(c), ch, r) for c, ch, r in data]
    assert pairs[4].where == f"{path}#4" and pairs[0].origin == {}


def test_json_array_and_parquet_read_as_json_lines(tmp_path):
    records = [swift(*p) for p in real_pairs(4)]
    lines = read_preferences(write_jsonl(tmp_path / "p.jsonl", records))
    array = tmp_path / "p.json"
    array.write_text(json.dumps(records, ensure_ascii=False), "utf-8")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "p.parquet")
    key = lambda ps: [(p.messages, p.chosen, p.rejected) for p in ps]  # noqa: E731
    assert len(lines) == count_records(array) == 8
    assert key(read_preferences(array)) == key(lines) == key(read_preferences(tmp_path / "p.parquet"))


def test_think_blocks_are_removed_and_the_judges_origin_kept(tmp_path):
    ctx, c, r = real_pairs(1)[0]
    record = trl_conversational(ctx + [{"role": "assistant", "content": "<think>\n想一想\n</think>\n\n好的。"},
                                       {"role": "user", "content": "嗯。"}], "<think>\n先共情\n</think>\n\n" + c, r)
    record["origin"] = {"source": "rubric", "judge": "j", "scores": {"chosen": 7, "rejected": 3}}
    (p,) = read_preferences(write_jsonl(tmp_path / "t.jsonl", [record]))
    assert p.chosen == c and p.messages[-2]["content"] == "好的。" and p.origin["scores"] == {"chosen": 7, "rejected": 3}


def test_a_dataset_spec_reads_any_other_shape(tmp_path):
    data = real_pairs(6)
    tag = {"user": "访客", "assistant": "咨询师"}
    records = [{"dialog": [{"speaker": tag[m["role"]], "text": m["content"]} for m in turns(ctx)], "sys": system(ctx),
                "good": {"speaker": "咨询师", "text": c}, "bad": {"speaker": "咨询师", "text": r}} for ctx, c, r in data]
    write_jsonl(tmp_path / "mine.jsonl", records)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"datasets": [{"name": "mine", "path": "mine.jsonl", "format": "sharegpt",
                                              "columns": {"messages": "dialog", "system": "sys", "chosen": "good",
                                                          "rejected": "bad"},
                                              "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "访客",
                                                       "assistant_tag": "咨询师"}}]}, ensure_ascii=False), "utf-8")
    mix = build_pair_mix(pair_entries([], str(spec), 0), **QUIET)
    assert len(mix.train) == count_records(tmp_path / "mine.jsonl") == len(data)
    assert [(list(p.messages), p.chosen, p.rejected) for p in mix.train] == data
    # TRL's layout under other column names
    renamed = [{"context": ctx, "better": c, "worse": r} for ctx, c, r in data]
    write_jsonl(tmp_path / "trl.jsonl", renamed)
    spec.write_text(json.dumps({"datasets": [{"path": "trl.jsonl", "format": "trl", "columns": {
        "prompt": "context", "chosen": "better", "rejected": "worse"}}]}), "utf-8")
    mix = build_pair_mix(pair_entries([], str(spec), 0), **QUIET)
    assert [(list(p.messages), p.chosen, p.rejected) for p in mix.train] == data


# -- bad input: file, record and field named ----------------------------------------------------------
def _ok():
    ctx, c, r = real_pairs(1)[1]  # a context of three rounds
    return trl_conversational(ctx, c, r)


def _with(**changes):
    return lambda: {**_ok(), **changes}


BAD = [  # (writer of the bad record, words the message must hold besides the file and the record)
    ("same", lambda: {**_ok(), "rejected": _ok()["chosen"]}, ["rejected", "chosen", "相同"]),
    ("chosen missing", lambda: {k: v for k, v in _ok().items() if k != "chosen"}, ["chosen", "缺少"]),
    ("rejected empty", lambda: {**_ok(), "rejected": [{"role": "assistant", "content": "  "}]}, ["rejected[0].content", "空"]),
    ("chosen empty string", _with(chosen=""), ["chosen", "空"]),
    ("ends on the counsellor", lambda: {**_ok(), "prompt": _ok()["prompt"][:3]}, ["prompt[2].content", "user"]),
    ("empty prompt", _with(prompt=[]), ["上下文"]),
    ("chosen a number", _with(chosen=3), ["chosen", "字符串"]),
    ("chosen two messages", lambda: {**_ok(), "chosen": _ok()["chosen"] * 2}, ["chosen", "一条"]),
    ("chosen by the client", lambda: {**_ok(), "chosen": [{"role": "user", "content": "x"}]}, ["chosen[0].role", "assistant"]),
    ("content a number", lambda: {**_ok(), "prompt": [{"role": "user", "content": 5}]}, ["prompt[0].content", "字符串"]),
    ("unknown role", lambda: {**_ok(), "prompt": [{"role": "client", "content": "x"}]}, ["prompt[0].role", "client"]),
    ("prompt an object", _with(prompt={"role": "user"}), ["prompt", "列表"]),
    ("origin a string", _with(origin="judge"), ["origin", "对象"]),
    ("two replies in a row", lambda: {**_ok(), "prompt": [_ok()["prompt"][0], {"role": "assistant", "content": "a"},
                                                            {"role": "assistant", "content": "b"},
                                                            {"role": "user", "content": "c"}]}, ["prompt[2].content"]),
]


@pytest.mark.parametrize("name,bad,words", BAD, ids=[b[0] for b in BAD])
def test_a_bad_pair_is_refused_naming_file_record_and_field(tmp_path, name, bad, words):
    path = write_jsonl(tmp_path / "pairs.jsonl", [_ok(), _ok(), bad()])
    with pytest.raises(PsyDTError) as err:
        read_preferences(path)
    message = str(err.value)
    for word in [str(path), "第 3 条记录", *words]:
        assert word in message, (word, message)


BAD_OTHER_LAYOUTS = [
    ("swift ends on the client", {"messages": [{"role": "user", "content": "a"}], "rejected_response": "b"}, ["messages", "assistant"]),
    ("swift rejected missing", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}],
                                "rejected_response": None}, ["rejected_response", "缺少"]),
    ("sharegpt chosen by the client", {"conversations": [{"from": "human", "value": "a"}], "chosen": {"from": "human", "value": "x"},
                                       "rejected": {"from": "gpt", "value": "y"}}, ["chosen.from", "assistant"]),
    ("implicit prompts differ", {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
                                 "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]},
     ["chosen", "共享"]),
    ("implicit identical", {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
                            "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}]},
     ["rejected", "相同"]),
    ("alpaca same", {"instruction": "a", "chosen": "x", "rejected": "x"}, ["rejected", "相同"]),
]


@pytest.mark.parametrize("name,bad,words", BAD_OTHER_LAYOUTS, ids=[b[0] for b in BAD_OTHER_LAYOUTS])
def test_bad_pairs_of_the_other_layouts_are_refused_too(tmp_path, name, bad, words):
    path = write_jsonl(tmp_path / "pairs.jsonl", [bad])
    with pytest.raises(PsyDTError) as err:
        read_preferences(path)
    for word in [str(path), "第 1 条记录", *words]:
        assert word in str(err.value), (word, str(err.value))


def test_mixed_layouts_in_one_file_and_an_unknown_shape_are_named(tmp_path):
    data = real_pairs(2)
    path = write_jsonl(tmp_path / "mixed.jsonl", [swift(*data[0]), trl_conversational(*data[1])])
    with pytest.raises(PsyDTError, match=r"第 2 条记录.*trl.*第 1 条记录.*swift"):
        read_preferences(path)
    with pytest.raises(PsyDTError, match=r"第 1 条记录.*认不出.*'answer'"):
        read_preferences(write_jsonl(tmp_path / "odd.jsonl", [{"question": "a", "answer": "b"}]))


# -- several files, weights, the held-out split by prompt ---------------------------------------------
def spec_of(tmp_path, datasets):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"datasets": datasets}, ensure_ascii=False), "utf-8")
    return str(spec)


def key(messages):
    return tuple((m["role"], m["content"]) for m in messages if m["role"] != "system")


def test_two_files_mix_with_weights_and_hold_out_whole_prompts(tmp_path):
    a_data = real_pairs(10, rejected_per_prompt=3)  # 20 prompts, 3 pairs each
    a_data[:3] = [(turns(ctx), c, r) for ctx, c, r in a_data[:3]]  # one prompt without a system prompt
    b_data = [(turns(ctx), c, r) for ctx, c, r in real_pairs(12)[20:]]  # 4 more prompts, none with a system prompt
    write_jsonl(tmp_path / "a.jsonl", [trl_conversational(*p) for p in a_data])
    (tmp_path / "b.json").write_text(json.dumps([swift(*p) for p in b_data] + [swift(*a_data[4])], ensure_ascii=False), "utf-8")
    n_a, n_b = count_records(tmp_path / "a.jsonl"), count_records(tmp_path / "b.json")
    spec = spec_of(tmp_path, [{"name": "a", "path": "a.jsonl", "weight": 2},
                              {"name": "b", "path": "b.json", "weight": 0.5, "system_prompt": "你是咨询师。"}])
    mix = build_pair_mix(pair_entries([], spec, 0), seed=3, val_size=0.25, system_prompt=DEFAULT_SYSTEM, **QUIET)
    prompts = {key(ctx) for ctx, _, _ in a_data + b_data}
    held = {key(p.messages) for p in mix.heldout}
    assert len(held) == round(0.25 * len(prompts))
    assert not held & {key(p.messages) for p in mix.train}  # no prompt on both sides
    # every pair of a held-out prompt is held out (a's three, and b's copy of a's pair 4 was a duplicate)
    per_prompt = {}
    for ctx, _, _ in a_data + b_data:
        per_prompt[key(ctx)] = per_prompt.get(key(ctx), 0) + 1
    assert len(mix.heldout) == sum(per_prompt[k] for k in held)
    rows = {r["name"]: r for r in mix.rows}
    assert rows["b"]["duplicates_dropped"] == 1 == mix.duplicates
    a_held = sum(p.where.startswith(str(tmp_path / "a.jsonl")) for p in mix.heldout)
    b_held = len(mix.heldout) - a_held
    from_a = [p for p in mix.train if p.where.startswith(str(tmp_path / "a.jsonl"))]
    assert len(from_a) == 2 * (n_a - a_held)
    assert len(mix.train) - len(from_a) == round(0.5 * (n_b - 1 - b_held))
    # the system prompt as SFT adds it: the dataset's own for b, --system_prompt for a, a corpus's own kept
    assert {p.messages[0]["content"] for p in mix.train if p.where.startswith(str(tmp_path / "b.json"))} == {"你是咨询师。"}
    all_a = from_a + [p for p in mix.heldout if p.where.startswith(str(tmp_path / "a.jsonl"))]
    assert {p.messages[0]["content"] for p in all_a} == {ctx[0]["content"] for ctx, _, _ in a_data[3:]} | {DEFAULT_SYSTEM}
    again = build_pair_mix(pair_entries([], spec, 0), seed=3, val_size=0.25, system_prompt=DEFAULT_SYSTEM, **QUIET)
    assert again.heldout == mix.heldout and again.train == mix.train
    other = build_pair_mix(pair_entries([], spec, 0), seed=4, val_size=0.25, system_prompt=DEFAULT_SYSTEM, **QUIET)
    assert {key(p.messages) for p in other.heldout} != held


def test_train_file_values_and_spec_checks_before_reading(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [swift(*p) for p in real_pairs(3)])
    mix = build_pair_mix(pair_entries([str(path)], None, 2), val_size=1, **QUIET)
    assert len(mix.train) + len(mix.heldout) == 2 and len(mix.heldout) == 1
    with pytest.raises(PsyDTError, match="format.*'pairs'.*trl"):
        pair_entries([], spec_of(tmp_path, [{"path": "p.jsonl", "format": "pairs"}]), 0)
    with pytest.raises(PsyDTError, match="columns 里的 'answer'"):
        pair_entries([], spec_of(tmp_path, [{"path": "p.jsonl", "format": "trl", "columns": {"answer": "x"}}]), 0)
    with pytest.raises(PsyDTError, match="--val_size 6 要留出 6 个提示"):
        build_pair_mix(pair_entries([str(path)], None, 0), val_size=6, **QUIET)
