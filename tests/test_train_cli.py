"""The training CLI end to end on the tiny model, offline."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REAL_TOKENIZER, ROOT, SHAPED_TRAIN, require
from psydt_lora.data.samples import IGNORE_INDEX
import train_psydt_lora

SCRIPT = ROOT / "LLM_fine_turning" / "train_psydt_lora.py"

TUTORIAL_FLAGS = {
    "--model_repo": "Qwen/Qwen3-1.7B", "--model_local_dir": "./Qwen/Qwen3-1.7B", "--train_file": None,
    "--eval_file": None, "--dataset_repo": "YIRONGCHEN/PsyDTCorpus", "--dataset_dir": "./data/PsyDTCorpus",
    "--output_dir": "./output/qwen3-1_7b-psydt-lora", "--max_length": 2048, "--per_device_train_batch_size": 1,
    "--per_device_eval_batch_size": 1, "--gradient_accumulation_steps": 4, "--num_train_epochs": 2,
    "--learning_rate": 1e-4, "--save_steps": 400, "--logging_steps": 10, "--eval_steps": 200,
    "--do_eval": True, "--max_train_items": 300, "--max_eval_items": 20, "--lora_r": 8, "--lora_alpha": 32,
    "--lora_dropout": 0.1, "--target_modules": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
}
EXTRA_FLAGS = ["--swanlab_project", "--swanlab_run_name", "--seed", "--hub", "--report_to", "--swanlab_mode",
               "--resume_from_checkpoint", "--dry_run", "--dump_samples", "--no-do_eval"]


def run(args, **kw):
    env = {**os.environ, "PYTHONPATH": ""}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, **kw)


def test_help_lists_every_flag_with_the_tutorial_defaults_and_imports_no_torch():
    out = run(["--help"]).stdout
    for flag in [*TUTORIAL_FLAGS, *EXTRA_FLAGS]:
        assert flag in out, flag
    args = train_psydt_lora.build_parser().parse_args([])
    for flag, default in TUTORIAL_FLAGS.items():
        if flag == "--learning_rate":  # the default depends on --stage: SFT's is the tutorial's
            assert train_psydt_lora.config_from_args(args).trainer.learning_rate == default
            continue
        assert getattr(args, flag[2:]) == default, flag
    assert train_psydt_lora.build_parser().parse_args(["--no-do_eval"]).do_eval is False
    probe = "import sys; sys.argv=['x','--help']; import train_psydt_lora as t\ntry: t.main()\nexcept SystemExit: pass\nprint(sorted(m for m in ('torch','transformers','peft') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=SCRIPT.parent)
    assert res.stdout.strip().endswith("[]")


def test_dry_run_dump_matches_independent_rendering_on_real_data(tmp_path):
    train = require(SHAPED_TRAIN)
    require(REAL_TOKENIZER / "vocab.json")
    dump = tmp_path / "samples.jsonl"
    res = run(["--model_local_dir", str(REAL_TOKENIZER), "--train_file", str(train), "--no-do_eval", "--dry_run",
               "--dump_samples", str(dump), "--max_train_items", "0", "--output_dir", str(tmp_path / "out"),
               "--sample_mode", "per_turn", "--no-sample_cache"])
    assert res.returncode == 0, res.stderr
    assert "样本 273" in res.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes no outputs
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(REAL_TOKENIZER))
    records = json.loads(train.read_text("utf-8"))
    lines = [json.loads(line) for line in dump.read_text("utf-8").splitlines()]
    assert len(lines) == 273
    for s in lines:
        assert set(s) >= {"dialogue_index", "turn_index", "input_ids", "labels"}
        msgs = records[s["dialogue_index"]]["messages"]
        k = s["message_index"]
        ctx = tok.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True, enable_thinking=False)
        ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        reply_ids = tok(msgs[k]["content"], add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
        assert s["input_ids"] == ctx_ids + reply_ids
        assert s["labels"] == [IGNORE_INDEX] * len(ctx_ids) + reply_ids


def test_full_run_writes_adapter_metrics_plot_and_honours_save_and_eval_steps(tiny_model_dir, data_files, tmp_path,
                                                                             capsys):
    train, test = data_files
    out = tmp_path / "out"
    argv = ["--model_local_dir", str(tiny_model_dir), "--train_file", str(train), "--eval_file", str(test),
            "--output_dir", str(out), "--report_to", "none", "--max_steps", "4", "--save_steps", "2",
            "--eval_steps", "2", "--logging_steps", "1", "--gradient_accumulation_steps", "1"]
    mask = os.umask(0o022)  # the usual umask: what we write is readable by others (serving from another user)
    try:
        assert train_psydt_lora.main(argv) == 0
    finally:
        os.umask(mask)
    private = [str(p.relative_to(out)) for p in out.rglob("*") if not p.is_symlink() and not p.stat().st_mode & 0o004]
    assert private == []  # checkpoints (the Trainer's and torch's 0600 files) included
    said = capsys.readouterr().out
    import torch

    device_lines = ("[运行] 设备：cuda",) if torch.cuda.is_available() else ("[运行] 设备：cpu", "没有可用的 CUDA GPU")
    for line in (*device_lines, "注意力实现：sdpa", "可训练参数", "有效批量 1 × 1",
                 "计划 4 步", f"输出目录：{out.resolve()}", "[日志] 第 1/4 步：loss ", "分块 linear_cross_entropy"):
        assert line in said, line
    assert "'loss': '" not in said  # numbers print as numbers
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    metrics = json.loads((out / "metrics.json").read_text("utf-8"))
    assert [step for step, _ in metrics["loss_history"]["eval"]] == [2, 4]  # the last step is evaluated once
    assert metrics["eval"]["step"] == 4
    assert metrics["final_eval_loss"] > 0 and metrics["final_train_loss"] > 0
    png = (out / "loss_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    adapter = out / "lora_adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "loss_curve.png").is_file()
    info = json.loads((adapter / "psydt_run.json").read_text("utf-8"))
    assert info["format"] == 2 and "args" not in info and info["stage"] == "sft"
    assert info["settings"]["trainer"]["max_steps"] == 4 and info["data"]["eval"]["samples"] == 4
    assert info["versions"]["transformers"]
    cfg = json.loads((adapter / "adapter_config.json").read_text("utf-8"))
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (8, 32, 0.1)
    assert sorted(cfg["target_modules"]) == sorted(TUTORIAL_FLAGS["--target_modules"].split(","))


def test_packing_trains_fewer_rows_and_plans_steps_by_rows(tiny_model_dir, data_files, tmp_path, capsys):
    import re

    train, _ = data_files
    out = tmp_path / "out"
    argv = ["--model_local_dir", str(tiny_model_dir), "--train_file", str(train), "--no-do_eval", "--output_dir", str(out),
            "--report_to", "none", "--num_train_epochs", "1", "--gradient_accumulation_steps", "1",
            "--sample_mode", "per_turn", "--packing", "--pack_length", "200", "--save_steps", "100"]
    assert train_psydt_lora.main(argv) == 0
    said = capsys.readouterr().out
    samples, rows, capacity = map(lambda v: int(v.replace(",", "")), re.search(
        r"训练样本 ([\d,]+) 个.*--packing 拼成 ([\d,]+) 行（每行最多 ([\d,]+) token", said).groups())
    assert 1 < rows < samples and capacity == 200
    assert f"计划 {rows} 步" in said  # one epoch, one row a step
    state = json.loads((out / f"checkpoint-{rows}" / "trainer_state.json").read_text("utf-8"))
    assert state["global_step"] == state["max_steps"] == rows  # the Trainer ran the steps we planned
    assert (out / "lora_adapter" / "adapter_model.safetensors").is_file()


def test_rerunning_a_finished_run_changes_nothing_and_says_so(tiny_model_dir, data_files, tmp_path, capsys):
    from safetensors.torch import load_file

    train, _ = data_files
    out = tmp_path / "out"
    argv = ["--model_local_dir", str(tiny_model_dir), "--train_file", str(train), "--no-do_eval", "--output_dir",
            str(out), "--report_to", "none", "--max_steps", "3", "--save_steps", "2", "--gradient_accumulation_steps", "1"]
    assert train_psydt_lora.main(argv) == 0
    metrics = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert train_psydt_lora.main(argv) == 0
    said = capsys.readouterr().out
    assert "[已完成]" in said and "--resume_from_checkpoint none" in said and "[运行] 设备" not in said  # no weights loaded
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]  # no step past the end
    assert (out / "metrics.json").read_bytes() == metrics
    # killed after the last checkpoint but before the adapter was saved: the rerun only saves it
    adapter = out / "lora_adapter" / "adapter_model.safetensors"
    before = load_file(str(adapter))
    shutil.rmtree(out / "lora_adapter")
    assert train_psydt_lora.main(argv) == 0
    assert "只补上保存 adapter" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    after = load_file(str(adapter))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_raising_max_steps_of_a_finished_run_continues_on_the_schedule_for_the_new_total(tiny_model_dir, data_files,
                                                                                          tmp_path, capsys):
    """10 steps trained and saved, then --max_steps 14 (what the "already finished" message advises): steps 11-14
    run on the linear schedule of a 14-step run -- never at learning rate 0, no jump."""
    train, _ = data_files
    out = tmp_path / "out"
    argv = ["--model_local_dir", str(tiny_model_dir), "--train_file", str(train), "--no-do_eval", "--output_dir",
            str(out), "--report_to", "none", "--save_steps", "5", "--logging_steps", "1", "--gradient_accumulation_steps",
            "1", "--learning_rate", "1e-3"]
    assert train_psydt_lora.main([*argv, "--max_steps", "10"]) == 0
    capsys.readouterr()
    assert train_psydt_lora.main([*argv, "--max_steps", "14"]) == 0
    assert "[续训] 计划步数从 10 改为 14" in capsys.readouterr().out
    state = json.loads((out / "checkpoint-14" / "trainer_state.json").read_text("utf-8"))
    rates = {h["step"]: h["learning_rate"] for h in state["log_history"] if "learning_rate" in h}
    assert sorted(rates) == list(range(1, 15))
    assert [rates[s] for s in range(1, 11)] == pytest.approx([1e-3 * (10 - s + 1) / 10 for s in range(1, 11)])
    assert [rates[s] for s in range(11, 15)] == pytest.approx([1e-3 * (14 - s + 1) / 14 for s in range(11, 15)])
    assert all(rates[s] > 0 for s in range(11, 15))


def test_the_record_and_the_card_name_the_base_that_was_loaded_and_what_was_trained(tiny_model_dir, data_files,
                                                                                     tmp_path, monkeypatch, capsys):
    """A local base folder is recorded as that folder -- not as the unused --model_repo default -- and the card
    says so; the hub id only when the weights came from the hub. Steps and epochs are the ones trained."""
    from psydt_lora import hub
    from psydt_lora.export.card import model_card
    from psydt_lora.inference.generation import GenerationSettings
    from psydt_lora.run_record import RunRecord

    train, _ = data_files

    def trained(model_dir, out):
        argv = ["--model_local_dir", str(model_dir), "--train_file", str(train), "--no-do_eval", "--output_dir",
                str(out), "--report_to", "none", "--max_steps", "3", "--save_steps", "100",
                "--gradient_accumulation_steps", "1"]
        assert train_psydt_lora.main(argv) == 0
        record = RunRecord.read(out / "lora_adapter")
        card = model_card(record, base=str(model_dir), adapter="a", system_prompt=None, settings=GenerationSettings(),
                          recipes=[])
        return record, json.loads((out / "checkpoint-3" / "trainer_state.json").read_text("utf-8")), card

    record, state, card = trained(tiny_model_dir, tmp_path / "local")
    assert record.base_model.path == str(tiny_model_dir) and record.base_model.repo is None
    assert record.trained == {"steps": 3, "epochs": round(state["epoch"], 4)} and record.trained["epochs"] > 1
    front = card.split("---\n")[1]
    assert "base_model" not in front and "Qwen/Qwen3-1.7B" not in card and f"本地文件夹 `{tiny_model_dir}`" in card
    assert "| 实际训练步数 | 3 |" in card and f"| 实际训练轮数 | {record.trained['epochs']} |" in card
    assert "| max_steps | 3 |" in card and "num_train_epochs" not in card  # --max_steps decided the length

    def download(repo, local_dir):  # the hub, as far as this test goes: the tiny model's files arrive
        shutil.copytree(tiny_model_dir, local_dir, dirs_exist_ok=True)

    monkeypatch.setitem(hub.DOWNLOADERS, "modelscope", (download, hub.DOWNLOADERS["modelscope"][1]))
    record, _, card = trained(tmp_path / "Qwen" / "Qwen3-1.7B", tmp_path / "fetched")
    assert (record.base_model.repo, record.base_model.hub) == ("Qwen/Qwen3-1.7B", "modelscope")
    assert 'base_model: "Qwen/Qwen3-1.7B"' in card.split("---\n")[1] and "从 modelscope 下载" in card


def test_log_lines_show_the_loss_to_four_decimals():
    from psydt_lora.train.progress import format_number

    assert format_number(11.94123) == "11.9412" and format_number(0.5) == "0.5000"
    assert format_number(2e-5) == "2.000e-05" and format_number(0.0) == "0.0000" and format_number(7) == "7"


def test_a_dry_run_leaves_no_sample_cache_beside_the_data(tiny_model_dir, data_files):
    train, _ = data_files
    assert train_psydt_lora.main(["--model_local_dir", str(tiny_model_dir), "--train_file", str(train), "--no-do_eval",
                                  "--dry_run"]) == 0
    assert sorted(p.name for p in train.parent.iterdir()) == ["test.json", "train.json"]


def test_a_download_says_it_is_connecting_and_how_to_skip_before_it_starts(data_files, tmp_path, monkeypatch, capsys):
    """Offline, modelscope's client is silent for ~20 s before its retries: the line comes first."""
    from psydt_lora import hub
    from psydt_lora.errors import run_cli

    said_before = []

    def offline(repo, local_dir):
        said_before.append(capsys.readouterr().out)
        raise ConnectionError("no network")

    monkeypatch.setitem(hub.DOWNLOADERS, "modelscope", (offline, hub.DOWNLOADERS["modelscope"][1]))
    train, _ = data_files
    assert run_cli(train_psydt_lora.main, ["--model_local_dir", str(tmp_path / "none"), "--train_file", str(train),
                                           "--no-do_eval", "--output_dir", str(tmp_path / "out")]) == 2
    assert "[下载] 正在连接 modelscope" in said_before[0] and "--model_local_dir 指向已经下载好的模型文件夹" in said_before[0]
    assert "HF_HUB_OFFLINE=1" in said_before[0]
    assert "ConnectionError" in capsys.readouterr().err


def test_help_is_chinese_and_shows_each_default_once():
    import re

    import inference_psydt_lora

    for parser in (train_psydt_lora.build_parser(), inference_psydt_lora.build_parser()):
        text = parser.format_help()
        assert "default" not in text and "usage" not in text and "show this help" not in text
        for action in parser._actions:
            if action.help:
                assert re.search(r"[\u4e00-\u9fff]", action.help), action.option_strings  # every flag explained in Chinese
        assert "（默认：2048）" in text or "（默认：512）" in text
        assert not re.search(r"默认[^\n]*（默认：", text)  # never twice on one flag


@pytest.mark.slow
def test_swanlab_local_mode_logs_settings_but_no_dialogue_text(tiny_model_dir, data_files, tmp_path):
    train, _ = data_files
    out = tmp_path / "out"
    res = run(["--model_local_dir", str(tiny_model_dir), "--train_file", str(train), "--no-do_eval",
               "--output_dir", str(out), "--swanlab_mode", "local", "--max_steps", "2", "--logging_steps", "1"],
              stdin=subprocess.DEVNULL, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    logs = out / "swanlog"
    assert logs.is_dir() and any(logs.rglob("*"))
    blob = b"".join(p.read_bytes() for p in logs.rglob("*") if p.is_file())
    assert "我最近睡不好".encode() not in blob and "心理咨询师".encode() not in blob


def test_no_do_eval_needs_no_eval_file_and_no_network(tiny_model_dir, data_files, tmp_path):
    train, _ = data_files
    argv = ["--model_local_dir", str(tiny_model_dir), "--train_file", str(train), "--no-do_eval", "--dry_run",
            "--dataset_dir", str(tmp_path / "nothing-here")]
    assert train_psydt_lora.main(argv) == 0
    assert not (tmp_path / "nothing-here").exists()


@pytest.mark.parametrize(
    "content, args, pattern",
    [
        ('[{"id": 3, "messages": [{"role": "user", "content": 1}]}]', [], r"第 1 条记录（id=3）：messages\[0\]\.content"),
        ('[{"id": 1, "messages": [', [], r"不是合法的 JSON"),
        (None, ["--max_length", "-5"], r"--max_length 必须是正数"),
        (None, ["--max_length", "20"], r"没有生成任何训练样本"),
        pytest.param(None, ["--target_modules", "nonexistent_proj"], r"nonexistent_proj.*不存在", marks=pytest.mark.slow),
    ],
)
def test_bad_input_stops_with_exit_2_and_no_traceback(tiny_model_dir, data_files, tmp_path, content, args, pattern):
    import re

    train, _ = data_files
    if content is not None:
        train.write_text(content, "utf-8")
    out = tmp_path / "out"
    res = run(["--model_local_dir", str(tiny_model_dir), "--train_file", str(train), "--no-do_eval",
               "--output_dir", str(out), "--report_to", "none", *args])
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert re.search(pattern, res.stderr), res.stderr
    assert not (out / "lora_adapter").exists()


def test_missing_train_file_is_named(tiny_model_dir, tmp_path):
    res = run(["--model_local_dir", str(tiny_model_dir), "--train_file", str(tmp_path / "nope.json"), "--no-do_eval"])
    assert res.returncode == 2 and "nope.json 不存在" in res.stderr


@pytest.mark.parametrize("path", ["finished", "interrupted", "crashed"])
def test_training_in_process_gives_back_its_signal_handlers(tiny_model_dir, tiny_tokenizer, data_files, tmp_path,
                                                            monkeypatch, path):
    """After an in-process run (a test, a notebook, a script calling main()) SIGINT and SIGTERM are what they
    were, whichever way training ended: a forked worker that inherited training's handler would only record
    `Pool.terminate()`'s SIGTERM, and the parallel template rendering would wait for it for ever."""
    import multiprocessing
    import signal

    from transformers import Trainer

    from psydt_lora import prompt

    train_step = Trainer.training_step

    def step(self, *a, **kw):
        if path == "interrupted":  # Ctrl-C during the first step
            signal.raise_signal(signal.SIGINT)
        if path == "crashed":
            raise RuntimeError("boom")
        return train_step(self, *a, **kw)

    monkeypatch.setattr(Trainer, "training_step", step)
    train, _ = data_files
    argv = ["--model_local_dir", str(tiny_model_dir), "--train_file", str(train), "--no-do_eval", "--output_dir",
            str(tmp_path / "out"), "--report_to", "none", "--max_steps", "2", "--gradient_accumulation_steps", "1",
            "--no-sample_cache"]
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if path == "crashed":
        with pytest.raises(RuntimeError, match="boom"):
            train_psydt_lora.main(argv)
    else:
        assert train_psydt_lora.main(argv) == {"finished": 0, "interrupted": 130}[path]
    after = {s: signal.getsignal(s) for s in before}
    for s, handler in before.items():  # a failure here must not leave the handlers to the next tests
        signal.signal(s, handler)
    assert after == before

    # the parallel renderer's fork Pool: its workers end on terminate() and the texts are the serial ones
    monkeypatch.setattr(prompt, "PARALLEL_FROM", 2)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    forked = []
    real_context = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda m=None: forked.append(m) or real_context(m))
    conversations = [[{"role": "user", "content": f"第{i}轮"}] for i in range(8)]
    texts = prompt.render_many(tiny_tokenizer, conversations, True)
    assert forked == ["fork"] and not multiprocessing.active_children()
    assert texts == [prompt.render(tiny_tokenizer, c, True) for c in conversations]


def test_both_scripts_take_both_spellings_of_the_model_folder():
    """--model_local_dir (training's tutorial flag) and --model_path (inference's) name one folder in both
    scripts; each help shows both."""
    import inference_psydt_lora

    for parser, dest in ((train_psydt_lora.build_parser(), "model_local_dir"), (inference_psydt_lora.build_parser(), "model_path")):
        for flag in ("--model_local_dir", "--model_path"):
            assert getattr(parser.parse_args([flag, "/m"]), dest) == "/m", (dest, flag)
        shown = parser.format_help()
        assert "--model_local_dir" in shown and "--model_path" in shown
