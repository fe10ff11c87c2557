"""Dialogue formats, several datasets in one run, hub datasets, the held-out split and bad input.

Counts are made here from the raw files with the tests' own few lines, never by the code under test."""
import json
import re
from pathlib import Path

import pytest

import inference_psydt_lora
import train_psydt_lora
from conftest import ASSETS, DIALOGUES, REAL_TOKENIZER, SYSTEM, require
from format_files import FORMATS, ROLE_TAGS, sharegpt, write_format, write_json
from psydt_lora import hub
from psydt_lora.data.datasets import build_mix, dialogue_key, entries_from_args, read_spec, system_prompts
from psydt_lora.data.formats import read_source
from psydt_lora.data.samples import IGNORE_INDEX, build_samples
from psydt_lora.errors import PsyDTError, run_cli
from psydt_lora.infer_cli import heldout_file
from psydt_lora.prompt import DEFAULT_SYSTEM
from psydt_lora.run_record import RunRecord

SMILE = ASSETS / "smilechat-sample" / "dialogues.json"
CPSYCOUNE = ASSETS / "cpsycoune"
QUIET = dict(say=lambda *a: None)


def smile_expected():
    """SmileChat as the tests read it: client -> user, counselor -> assistant, trailing client turns dropped."""
    out = []
    for d in json.loads(require(SMILE).read_text("utf-8")):
        msgs = [{"role": {"client": "user", "counselor": "assistant"}[t["role"]], "content": t["content"]} for t in d]
        while msgs and msgs[-1]["role"] == "user":
            msgs.pop()
        out.append(msgs)
    return out


def cpsycoune_expected():
    files = sorted(require(CPSYCOUNE / "Career" / "1.json").parents[1].rglob("*.json"),
                   key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))])
    out = {}
    for f in files:
        lines = json.loads(f.read_text("utf-8"))
        out[str(f.relative_to(CPSYCOUNE))] = [
            {"role": "user" if s.startswith("求助者：") else "assistant", "content": s.split("：", 1)[1].strip()}
            for s in lines]
    return out


def replies(dialogues):
    return sum(1 for msgs in dialogues for i, m in enumerate(msgs) if m["role"] == "assistant"
               and any(p["role"] == "user" for p in msgs[:i]) and m["content"].strip())


# -- the published corpora ------------------------------------------------------------------------------
def test_smilechat_as_published_is_detected_and_read_turn_for_turn():
    want = smile_expected()
    src = read_source(SMILE.parent)
    assert (src.format, src.detected, len(src.dialogues)) == ("smilechat", True, 60)
    assert [d.messages for d in src.dialogues] == want
    assert src.stats.dropped_trailing_user_turns == 12  # SOURCE.md: 12 of the 60 end with the client
    assert sum(len(d.targets()) for d in src.dialogues) == replies(want)


def test_smilechat_repository_layout_one_dialogue_a_file_reads_the_same(tmp_path):
    """SmileChat's own repository keeps each dialogue in data/<id>.json; a bare messages list is read alike."""
    for i, d in enumerate(json.loads(require(SMILE).read_text("utf-8"))[:12]):
        write_json(tmp_path / "data" / f"{i}.json", d)
    src = read_source(tmp_path / "data")
    assert src.format == "smilechat" and [d.messages for d in src.dialogues] == smile_expected()[:12]
    assert [d.id for d in src.dialogues][:3] == ["0.json", "1.json", "2.json"]
    bare = write_json(tmp_path / "bare.json", DIALOGUES[0]["messages"])
    assert read_source(bare).dialogues[0].messages == DIALOGUES[0]["messages"]


def test_cpsycoune_as_published_is_one_dialogue_a_file():
    want = cpsycoune_expected()
    src = read_source(CPSYCOUNE)
    assert (src.format, len(src.dialogues)) == ("cpsycoune", 45)
    assert {d.id: d.messages for d in src.dialogues} == want
    assert [d.id for d in src.dialogues][:2] == ["Career/1.json", "Career/2.json"]  # natural name order


@pytest.mark.parametrize("path", [SMILE, CPSYCOUNE])
def test_real_corpora_samples_equal_apply_chat_template(real_tokenizer, path):

    mix = build_mix(entries_from_args([str(require(path) if path.suffix else path)], None, 8), system_prompt=SYSTEM,
                    **QUIET)
    samples, _ = build_samples(mix.train, real_tokenizer, max_length=100_000)
    assert len(samples) == sum(len(d.targets()) for d in mix.train) > 8
    tok = real_tokenizer
    for s in samples:
        msgs = mix.train[s.dialogue_index].messages
        assert msgs[0] == {"role": "system", "content": SYSTEM}
        k = s.message_index
        ctx = tok(tok.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True, enable_thinking=False),
                  add_special_tokens=False)["input_ids"]
        reply = tok(msgs[k]["content"], add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
        assert (s.input_ids, s.labels) == (ctx + reply, [IGNORE_INDEX] * len(ctx) + reply)


def test_cpsycound_text_continues_untagged_lines_and_takes_ascii_colons(tmp_path):
    f = tmp_path / "case_0.txt"
    f.write_text("来访者：我最近很累。\n而且睡不着。\n\n心理咨询师: 听起来很辛苦。\n\n来访者：是的。\n", "utf-8")
    src = read_source(f)
    assert src.format == "cpsycound"
    assert src.dialogues[0].messages == [{"role": "user", "content": "我最近很累。\n而且睡不着。"},
                                         {"role": "assistant", "content": "听起来很辛苦。"}]
    assert src.stats.dropped_trailing_user_turns == 1


# A case written the way CPsyCounD publishes some of its 3,134 (e.g. its case_15.txt): blank lines between
# utterances, no newline at the end, stage directions on lines of their own between two counsellor utterances
# (and once between the client and the counsellor), a bracket inside an utterance that is speech.
STAGED_CASE = """来访者：我一想到考试就心慌，手心全是汗。

心理咨询师：谢谢你愿意说出来。我们先做一个放松练习，请慢慢闭上眼睛，跟着我的声音呼吸。

（经过一段时间的放松引导）

心理咨询师：现在感觉怎么样？

来访者：好一些了（笑），心跳慢下来了。

【来访者沉默了一会儿】

来访者：其实我最怕的是让妈妈失望。

心理咨询师：（点头）
心理咨询师：听起来妈妈的期待对你很重要。

来访者：是的。

(后续反馈：来访者在下一次考试前情绪平稳。)

心理咨询师：很高兴听到你的变化，下次我们继续练习。"""

STAGED_TURNS = [
    {"role": "user", "content": "我一想到考试就心慌，手心全是汗。"},
    {"role": "assistant", "content": "谢谢你愿意说出来。我们先做一个放松练习，请慢慢闭上眼睛，跟着我的声音呼吸。\n现在感觉怎么样？"},
    {"role": "user", "content": "好一些了（笑），心跳慢下来了。\n其实我最怕的是让妈妈失望。"},
    {"role": "assistant", "content": "听起来妈妈的期待对你很重要。"},
    {"role": "user", "content": "是的。"},
    {"role": "assistant", "content": "很高兴听到你的变化，下次我们继续练习。"},
]


def test_cpsycound_stage_directions_are_dropped_and_one_speakers_run_is_one_turn(tmp_path):
    folder = tmp_path / "CPsyCounD" / "Data"
    folder.mkdir(parents=True)
    (folder / "case_0.txt").write_text("来访者：你好。\n\n心理咨询师：你好，请坐。\n\n", "utf-8")
    (folder / "case_1.txt").write_text(STAGED_CASE, "utf-8")
    src = read_source(folder)
    assert src.format == "cpsycound" and len(src.dialogues) == 2
    assert src.dialogues[1].messages == STAGED_TURNS
    assert (src.stats.stage_directions, src.stats.merged_turns) == (4, 2)
    # a bracketed line after a speaker's tag is speech when it is said in the first person: kept, never dropped
    (folder / "case_1.txt").write_text("来访者：（我不想活了）\n\n心理咨询师：（点头）\n心理咨询师：我在听。", "utf-8")
    assert read_source(folder).dialogues[1].messages == [{"role": "user", "content": "（我不想活了）"},
                                                         {"role": "assistant", "content": "我在听。"}]


def test_cpsycound_folder_with_stage_directions_trains_and_the_summary_counts_them(tiny_model_dir, tmp_path, capsys):
    folder = write_format(tmp_path, "cpsycound", DIALOGUES)
    (folder / "case_15.txt").write_text(STAGED_CASE, "utf-8")
    rc = run_cli(train_psydt_lora.main, ["--model_local_dir", str(tiny_model_dir), "--train_file", str(folder),
                                         "--dry_run", "--output_dir", str(tmp_path / "out"), "--no-do_eval"])
    said = capsys.readouterr()
    assert rc == 0, said.err
    assert "格式 cpsycound（自动识别），读到 3 段对话" in said.out
    assert "[训练] 数据整理：同一人连续的发言合并 2 处，去掉舞台说明（整行括号）4 行" in said.out


def test_cpsycoune_list_drops_a_stage_direction_item(tmp_path):
    path = write_json(tmp_path / "Topic" / "1.json", ["求助者：我很累。", "（长时间的沉默）", "支持者：我在听。",
                                                      "支持者：慢慢说。"])
    src = read_source(path)
    assert src.dialogues[0].messages == [{"role": "user", "content": "我很累。"},
                                         {"role": "assistant", "content": "我在听。\n慢慢说。"}]
    assert (src.stats.stage_directions, src.stats.merged_turns) == (1, 1)


def test_tables_read_like_json_lines(tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rows = [sharegpt(d) for d in DIALOGUES]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink, pa.ipc.new_stream(sink, pa.Table.from_pylist(rows).schema) as w:
        w.write_table(pa.Table.from_pylist(rows))
    flat = [{**r, "conversations": json.dumps(r["conversations"], ensure_ascii=False)} for r in rows]
    pcsv.write_csv(pa.Table.from_pylist(flat), tmp_path / "a.csv")  # a CSV cell holds the turn list as JSON text
    import pyarrow.feather as feather

    feather.write_feather(pa.Table.from_pylist(rows), str(tmp_path / "b.arrow"))  # the Arrow file layout
    for name in ("a.parquet", "a.arrow", "b.arrow", "a.csv"):
        src = read_source(tmp_path / name)
        assert src.format == "sharegpt", name
        assert [d.messages for d in src.dialogues] == [d["messages"] for d in DIALOGUES], name


# -- dry run: detected format and counts, no weights ---------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_dry_run_names_the_format_and_counts(tiny_model_dir, tmp_path, capsys, fmt):
    path = write_format(tmp_path / "data", fmt, DIALOGUES + [{**DIALOGUES[0], "id": "again"}])  # one exact duplicate
    out = tmp_path / "out"
    assert run_cli(train_psydt_lora.main, ["--model_local_dir", str(tiny_model_dir), "--train_file", str(path),
                                           "--dry_run", "--output_dir", str(out), "--sample_mode", "per_turn",
                                           "--system_prompt", SYSTEM]) == 0
    said = capsys.readouterr().out
    assert f"格式 {fmt}（自动识别），读到 3 段对话，重复丢弃 1，留出验证 0，权重 1 → 训练 2 段" in said
    assert "[训练] 对话 2，样本 4，" in said  # two replies in each of the two dialogues
    assert not out.exists()


# -- several datasets ------------------------------------------------------------------------------------
def spec_mix(tmp_path, seed=42, val_size=0):
    spec = write_json(tmp_path / "spec.json", {"datasets": [
        {"name": "smile", "path": str(require(SMILE)), "max_items": 20, "weight": 0.5},
        {"name": "e", "path": str(CPSYCOUNE), "max_items": 10, "weight": 2, "system_prompt": "另一个提示词"},
    ]})
    return build_mix(read_spec(spec), seed=seed, system_prompt=SYSTEM, val_size=val_size, **QUIET)


def test_weights_and_caps_mix_deterministically(tmp_path):
    a, b = spec_mix(tmp_path), spec_mix(tmp_path)
    rows = {r["name"]: r for r in a.rows}
    assert (rows["smile"]["dialogues"], rows["e"]["dialogues"]) == (10, 20)  # 20 x 0.5, 10 x 2
    assert [(d.source, d.index) for d in a.train] == [(d.source, d.index) for d in b.train]  # same seed, same mix
    other = spec_mix(tmp_path, seed=7)
    assert [d.index for d in other.train if d.source == "smile"] != [d.index for d in a.train if d.source == "smile"]
    e = [d.id for d in a.train if d.source == "e"]
    assert sorted(e) == sorted(list(cpsycoune_expected())[:10] * 2)  # every dialogue twice
    assert system_prompts(a.train) == {"smile": SYSTEM, "e": "另一个提示词"}


def test_heldout_split_is_by_dialogue_deterministic_and_never_trained(tmp_path):

    a = spec_mix(tmp_path, val_size=0.2)
    assert len(a.heldout) == round(0.2 * 30)
    assert [(d.source, d.index) for d in a.heldout] == [(d.source, d.index) for d in spec_mix(tmp_path, val_size=0.2).heldout]
    assert not {dialogue_key(d) for d in a.heldout} & {dialogue_key(d) for d in a.train}
    rows = {r["name"]: r for r in a.rows}
    held = {s: sum(1 for d in a.heldout if d.source == s) for s in ("smile", "e")}
    assert rows["smile"]["dialogues"] == round(0.5 * (20 - held["smile"])) and rows["e"]["dialogues"] == 2 * (10 - held["e"])
    assert len(spec_mix(tmp_path, val_size=3).heldout) == 3


def test_exact_duplicates_across_datasets_are_dropped_and_counted(tmp_path):
    shaped = require(ASSETS / "psydt-shaped" / "train.json")  # the same 48 SmileChat dialogues, PsyDT-shaped
    mix = build_mix(entries_from_args([str(shaped), str(require(SMILE))], None, None), **QUIET)
    rows = {r["name"]: r for r in mix.rows}
    shaped_turns = {json.dumps([m for m in r["messages"] if m["role"] != "system"], ensure_ascii=False)
                    for r in json.loads(shaped.read_text("utf-8"))}
    dup = sum(json.dumps(m, ensure_ascii=False) in shaped_turns for m in smile_expected())
    assert dup > 0 and rows["dialogues"]["duplicates_dropped"] == dup == mix.duplicates
    assert rows["dialogues"]["dialogues"] == 60 - dup


# -- hub datasets ----------------------------------------------------------------------------------------
def test_hub_dataset_by_id_is_downloaded_once_and_its_train_split_used(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PSYDT_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake(repo, folder, patterns):  # the network boundary: what a dataset repo with two splits holds
        calls.append((repo, folder))
        write_format(folder / "data", "sharegpt", DIALOGUES).rename(folder / "data" / "train-00000.jsonl")
        write_format(folder / "data", "alpaca", DIALOGUES[:1]).rename(folder / "data" / "test-00000.jsonl")

    monkeypatch.setitem(hub.DATASET_DOWNLOADERS, "huggingface", fake)
    argv = ["--model_local_dir", str(tiny_model_dir), "--train_file", "hub:someone/counsel", "--hub", "huggingface",
            "--dry_run", "--no-do_eval"]
    for _ in range(2):
        assert run_cli(train_psydt_lora.main, argv) == 0
        assert "格式 sharegpt（自动识别），读到 2 段对话" in capsys.readouterr().out
    assert len(calls) == 1 and calls[0][0] == "someone/counsel"

    def offline(repo, folder, patterns):
        raise ConnectionError("no network")

    monkeypatch.setitem(hub.DATASET_DOWNLOADERS, "modelscope", offline)
    rc = run_cli(train_psydt_lora.main, argv[:3] + ["hub:someone/other", "--dry_run", "--no-do_eval"])
    err = capsys.readouterr().err
    assert rc == 2 and "下载数据集 someone/other 失败" in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "datasets" / "modelscope" / "someone" / "other").exists()


# -- bad input: Chinese, naming file / record / field, exit 2, before any model is fetched, nothing written
def bad_cases(tmp_path):
    sg = [sharegpt(d) for d in DIALOGUES]
    unknown = write_json(tmp_path / "unknown.json", [sg[0], {**sg[1], "conversations": [
        {"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}])
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(sg[0], ensure_ascii=False) + "\n" + json.dumps(
        {"instruction": "a", "output": "b"}, ensure_ascii=False) + "\n", "utf-8")
    first = write_json(tmp_path / "first.json", sg)
    again = write_json(tmp_path / "again.json", sg[::-1])
    weight = write_json(tmp_path / "w.json", {"datasets": [{"path": str(first), "weight": 0}]})
    text = write_json(tmp_path / "s.json", {"datasets": [{"path": str(first), "weight": "2"}]})
    yaml_bad = tmp_path / "bad.yaml"
    yaml_bad.write_text("datasets:\n  - path: [unclosed\n", "utf-8")
    key = write_json(tmp_path / "k.json", [{"paths": str(first)}])
    number = write_json(tmp_path / "n.json", [{"path": str(first)}, {"path": 123}])  # the second one is wrong
    comma = tmp_path / "comma.json"
    comma.write_text('{"datasets": [\n  {"path": "a.json"}\n  {"path": "b.json"}\n]}\n', "utf-8")
    tiny = write_json(tmp_path / "tiny.json", [{"path": str(first), "weight": 0.01}])
    where = write_json(tmp_path / "h.json", [{"hub": "a/b", "hub_name": "github"}])
    return [
        (["--dataset_spec", str(number)], [str(number), "第 2 个数据集", "path 必须是字符串", "123"]),
        (["--dataset_spec", str(comma)], [str(comma), "不是合法的 JSON", "第 3 行第 3 列", "缺少逗号"]),
        (["--dataset_spec", str(tiny)], [str(tiny), "weight 0.01", "一段也不会参与训练"]),
        (["--dataset_spec", str(where)], [str(where), "hub_name", "'github'", "modelscope"]),
        (["--train_file", str(unknown)], [str(unknown), "第 2 条记录", "conversations[1].from", "'bot'"]),
        (["--train_file", str(mixed)], [str(mixed), "第 2 条记录", "alpaca", "sharegpt", "不能混用"]),
        (["--train_file", f"{first},{again}"], [str(again), "没有剩下可训练的对话", "重复 2 条"]),
        (["--dataset_spec", str(weight)], [str(weight), "第 1 个数据集", "weight 必须是正数", "0"]),
        (["--dataset_spec", str(text)], [str(text), "weight 必须是正数", "'2'"]),
        (["--dataset_spec", str(yaml_bad)], [str(yaml_bad), "不是合法的 YAML", "第 3 行第 1 列", "第 2 行第 11 列"]),
        (["--dataset_spec", str(key)], [str(key), "第 1 个数据集", "'paths'"]),
        (["--train_file", "hub:no-owner"], ["--train_file hub:no-owner", "作者/名字"]),
    ]


def test_bad_input_stops_with_a_chinese_message_before_the_model_is_fetched(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hub, "_downloader", lambda *a: pytest.fail("the model was fetched before the data was checked"))
    for extra, words in bad_cases(tmp_path):
        model, out = tmp_path / "no-model", tmp_path / "out"
        rc = run_cli(train_psydt_lora.main, ["--model_local_dir", str(model), "--output_dir", str(out), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("错误："), (extra, err)
        for w in words:
            assert w in err, (w, err)
        assert not model.exists() and not out.exists()  # nothing written


# -- real tiny trainings -------------------------------------------------------------------------------------
def train(tiny_model_dir, out, *extra):
    argv = ["--model_local_dir", str(tiny_model_dir), "--output_dir", str(out), "--report_to", "none",
            "--max_steps", "2", "--gradient_accumulation_steps", "1", "--save_steps", "100", "--logging_steps", "1",
            "--max_length", "256", "--eval_steps", "100", *extra]
    assert run_cli(train_psydt_lora.main, argv) == 0
    return json.loads((out / "lora_adapter" / "psydt_run.json").read_text("utf-8"))


@pytest.mark.slow
def test_training_on_the_published_corpora_mixed_with_weights_and_a_heldout_split(tiny_model_dir, tmp_path):

    spec = write_json(tmp_path / "spec.json", {"datasets": {
        "smile": {"path": str(require(SMILE)), "max_items": 6, "weight": 0.5},
        "e": {"path": str(CPSYCOUNE), "max_items": 4, "weight": 2}}})
    info = train(tiny_model_dir, tmp_path / "out", "--dataset_spec", str(spec), "--val_size", "2",
                 "--max_eval_items", "3")
    rows = info["data"]["datasets"]
    assert (rows["smile"]["format"], rows["e"]["format"]) == ("smilechat", "cpsycoune")
    held = json.loads(Path(info["data"]["heldout"]["file"]).read_text("utf-8"))
    held_ids = {(r["source"], r["id"]) for r in held}
    n = {s: sum(1 for src, _ in held_ids if src == s) for s in ("smile", "e")}
    assert sum(n.values()) == 2 and rows["smile"]["heldout"] == n["smile"]
    assert rows["smile"]["dialogues"] == round(0.5 * (6 - n["smile"])) and rows["e"]["dialogues"] == 2 * (4 - n["e"])
    assert info["data"]["train"]["dialogues"] == rows["smile"]["dialogues"] + rows["e"]["dialogues"]
    assert info["data"]["eval"]["samples"] == 3 and info["data"]["eval"]["file"] == "--val_size"
    assert info["system_prompt"] == DEFAULT_SYSTEM == info["system_prompts"]["smile"] == info["system_prompts"]["e"]
    record = RunRecord.read(tmp_path / "out" / "lora_adapter")
    assert heldout_file(record) == Path(info["data"]["heldout"]["file"])  # the batch test's default test file
    result = tmp_path / "test.json"
    assert inference_psydt_lora.main(["--model_path", str(tiny_model_dir), "--adapter_path", str(
        tmp_path / "out" / "lora_adapter"), "--mode", "test", "--test_output_file", str(result), "--max_test_items", "2",
        "--max_new_tokens", "3", "--no-do_sample", "--dataset_dir", str(tmp_path / "nothing")]) == 0
    report = json.loads(result.read_text("utf-8"))
    assert report["meta"]["test_file"] == info["data"]["heldout"]["file"] and report["meta"]["items"] == 2


def variant(dialogues, mark):
    """The same dialogues with every turn changed a little: not duplicates of the originals."""
    return [{**d, "messages": [m if m["role"] == "system" else {**m, "content": m["content"] + mark}
                               for m in d["messages"]]} for d in dialogues]


def test_training_on_sharegpt_alpaca_and_an_unseen_shape_through_a_spec(tiny_model_dir, tmp_path):
    sg = write_format(tmp_path, "sharegpt", DIALOGUES)
    al = write_format(tmp_path, "alpaca", variant(DIALOGUES[:1], "！"))
    unseen = write_json(tmp_path / "unseen.json", [  # a shape no reader knows: its columns and tags declared
        {"编号": i, "对话": [{"说话人": "访客" if m["role"] == "user" else "老师", "文本": m["content"]}
                           for m in d["messages"] if m["role"] != "system"]}
        for i, d in enumerate(variant(DIALOGUES, "？"))])
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""datasets:
  - {{name: sg, path: {sg.name}, weight: 2}}
  - {{name: al, path: {al.name}}}
  - name: unseen
    path: {unseen.name}
    format: sharegpt
    columns: {{messages: 对话, system: null, id: 编号}}
    tags: {{role_tag: 说话人, content_tag: 文本, user_tag: 访客, assistant_tag: [老师]}}
    system_prompt: {SYSTEM}
""", "utf-8")
    info = train(tiny_model_dir, tmp_path / "out", "--dataset_spec", str(spec), "--sample_mode", "per_turn")
    rows = info["data"]["datasets"]
    assert [rows[n]["format"] for n in ("sg", "al", "unseen")] == ["sharegpt", "alpaca", "sharegpt"]
    assert [rows[n]["detected"] for n in ("sg", "al", "unseen")] == [True, True, False]
    assert [rows[n]["dialogues"] for n in ("sg", "al", "unseen")] == [4, 1, 2]
    per_dialogue = [sum(m["role"] == "assistant" for m in d["messages"]) for d in DIALOGUES]
    assert info["data"]["train"]["samples"] == 2 * sum(per_dialogue) + per_dialogue[0] + sum(per_dialogue)
    assert (tmp_path / "out" / "lora_adapter" / "adapter_model.safetensors").is_file()


def test_a_broken_table_file_is_named(tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(PsyDTError, match=re.escape(str(bad))):
        read_source(bad)
