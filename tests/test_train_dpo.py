"""--stage dpo through the training script, for real on the tiny model: the first logged loss is ln 2 from the
base and from an SFT adapter (the reference is that adapter, not the bare base); the run record names stage,
loss and reference; an interrupted run resumes to the same adapter as an uninterrupted one, reusing the cached
reference log-probs; bad preference input and misplaced flags stop before any weight is loaded."""
import json
import math
import shutil
import subprocess
import sys

import pytest

import train_psydt_lora
from conftest import DIALOGUES, ROOT
from psydt_lora.run_record import RunRecord

LN2 = math.log(2)


def pair_file(path, n=None):
    """TRL's conversational layout: every assistant turn after the first as chosen, a dismissive reply rejected."""
    rows = []
    for d in DIALOGUES:
        m = d["messages"]
        rows += [{"prompt": m[:i], "chosen": [msg], "rejected": [{"role": "assistant", "content": "随便吧，我不关心。"}]}
                 for i, msg in enumerate(m) if msg["role"] == "assistant" and i >= 2]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:n]), "utf-8")
    return path


def dpo(model_dir, out, pairs, *extra):
    argv = ["--stage", "dpo", "--model_local_dir", str(model_dir), "--train_file", str(pairs), "--output_dir", str(out),
            "--report_to", "none", "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
            "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3", "--no-do_eval", *extra]
    return train_psydt_lora.main(argv)


def first_loss(out):
    return json.loads((out / "metrics.json").read_text("utf-8"))["loss_history"]["train"][0][1]


@pytest.mark.slow
def test_dpo_from_the_base_starts_at_ln2_and_records_the_stage(tiny_model_dir, tmp_path, capsys):
    pairs = pair_file(tmp_path / "pairs.jsonl")
    assert dpo(tiny_model_dir, tmp_path / "out", pairs) == 0
    assert abs(first_loss(tmp_path / "out") - LN2) < 1e-4
    record = RunRecord.read(tmp_path / "out" / "lora_adapter")
    assert record.stage == "dpo" and record.preference["loss"] == "sigmoid" and record.preference["reference"] == "base"
    assert record.preference["beta"] == 0.1 and record.setting("learning_rate") == 1e-3
    assert record.data["train"]["pairs"] == 4 and record.data["train"]["prompts"] == 4
    assert record.metrics["final_rewards_accuracies"] is not None
    said = capsys.readouterr().out
    assert "计算参考 log-prob" in said and "参考模型：基础模型" in said


@pytest.mark.slow
def test_dpo_from_an_sft_adapter_uses_it_as_reference_and_resumes_exactly(tiny_model_dir, memorised_adapter, tmp_path,
                                                                          capsys):
    from safetensors.torch import load_file

    pairs = pair_file(tmp_path / "pairs.jsonl")
    out = tmp_path / "out"
    assert dpo(tiny_model_dir, out, pairs, "--adapter_path", str(memorised_adapter)) == 0
    # the policy starts as the SFT model and the reference is that model: ln 2, though the SFT model's
    # log-probs are far from the base's (a bare-base reference would start elsewhere)
    assert abs(first_loss(out) - LN2) < 1e-4
    record = RunRecord.read(out / "lora_adapter")
    assert record.preference["reference"] == "adapter" and record.setting("adapter_path") == str(memorised_adapter)
    # the continued adapter's own LoRA settings and data are what the record (and so export and the card) say
    assert record.settings["lora"]["r"] == 16 and record.parent["stage"] == "sft"
    assert record.parent["adapter"] == str(memorised_adapter) and record.all_datasets.keys() > record.datasets.keys()
    sft_rank = json.loads((memorised_adapter / "adapter_config.json").read_text("utf-8"))["r"]
    assert json.loads((out / "lora_adapter" / "adapter_config.json").read_text("utf-8"))["r"] == sft_rank == 16
    whole = load_file(str(out / "lora_adapter" / "adapter_model.safetensors"))
    capsys.readouterr()

    # interrupted after the step-2 checkpoint: the same command resumes to the same adapter
    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "lora_adapter")
    assert dpo(tiny_model_dir, out, pairs, "--adapter_path", str(memorised_adapter)) == 0
    said = capsys.readouterr().out
    assert "从检查点" in said and "checkpoint-2" in said and "读取已缓存的参考 log-prob" in said
    resumed = load_file(str(out / "lora_adapter" / "adapter_model.safetensors"))
    assert whole.keys() == resumed.keys()
    assert all((whole[k] - resumed[k]).abs().max() < 1e-6 for k in whole)
    sft = load_file(str(memorised_adapter / "adapter_model.safetensors"))
    assert any((whole[k] - sft[k]).abs().max() > 0 for k in whole)  # it did train


def test_the_base_as_reference_is_a_choice_when_continuing(tiny_model_dir, memorised_adapter, tmp_path):
    args = train_psydt_lora.build_parser().parse_args(
        ["--stage", "dpo", "--train_file", "x", "--adapter_path", str(memorised_adapter), "--pref_reference", "base"])
    assert train_psydt_lora.config_from_args(args).preference.reference == "base"
    args = train_psydt_lora.build_parser().parse_args(["--stage", "dpo", "--pref_loss", "simpo", "--train_file", "x"])
    pref = train_psydt_lora.config_from_args(args).preference
    assert pref.reference == "none" and pref.simpo_gamma == 0.5 and not pref.needs_reference


@pytest.mark.parametrize("extra, message", [
    (["--adapter_path", "{adapter}"], "--adapter_path 只用于偏好训练"),
    (["--stage", "dpo"], "--stage dpo 需要偏好数据"),
    (["--stage", "dpo", "--train_file", "{pairs}", "--pref_reference", "adapter"], "--pref_reference adapter 需要 --adapter_path"),
    (["--stage", "dpo", "--train_file", "{pairs}", "--pref_beta", "0"], "--pref_beta 必须是正数"),
    (["--stage", "dpo", "--train_file", "{pairs}", "--packing"], "不支持 --sample_mode / --packing"),
    (["--stage", "dpo", "--train_file", "{bad}"], "bad.jsonl 第 1 条记录"),
    (["--pref_beta", "0.2"], "--pref_beta 只用于偏好训练"),
    (["--stage", "dpo", "--train_file", "{pairs}", "--adapter_path", "{adapter}", "--lora_r", "32"], "--lora_r 不会起作用"),
    (["--stage", "dpo", "--train_file", "{pairs}", "--eval_file", "{pairs}"], "不用 --eval_file"),
    (["--stage", "dpo", "--train_file", "{pairs}", "--output_dir", "{sft_out}"], "已经是 sft 的训练"),
])
def test_bad_preference_runs_stop_before_any_weight_with_a_chinese_message(memorised_adapter, tmp_path, capsys, extra,
                                                                           message):
    from psydt_lora.errors import run_cli

    pairs = pair_file(tmp_path / "pairs.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "我很难过"}],
                               "chosen": [{"role": "assistant", "content": "我在听"}]}, ensure_ascii=False) + "\n", "utf-8")
    fill = {"adapter": str(memorised_adapter), "pairs": str(pairs), "bad": str(bad), "sft_out": str(memorised_adapter.parent)}
    argv = ["--model_local_dir", str(tmp_path / "no-model"), "--output_dir", str(tmp_path / "out"), "--report_to", "none",
            *[a.format(**fill) for a in extra]]
    before = sorted(p.name for p in memorised_adapter.parent.iterdir())
    assert run_cli(train_psydt_lora.main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written, no model looked for
    assert sorted(p.name for p in memorised_adapter.parent.iterdir()) == before  # the SFT run's folder untouched


def test_a_run_continuing_an_sft_adapter_defaults_to_its_learned_system_prompt(memorised_adapter):
    """Pair files from the judge carry no system message: they get the prompt the SFT adapter learned."""
    from conftest import SYSTEM

    parse = train_psydt_lora.build_parser().parse_args
    args = parse(["--stage", "dpo", "--train_file", "x", "--adapter_path", str(memorised_adapter)])
    assert train_psydt_lora.config_from_args(args).data.system_prompt == SYSTEM
    assert train_psydt_lora.config_from_args(args).lora.r == 16  # the adapter's, not --lora_r's default 8
    args = parse(["--stage", "dpo", "--train_file", "x", "--adapter_path", str(memorised_adapter), "--system_prompt", ""])
    assert train_psydt_lora.config_from_args(args).data.system_prompt == ""


@pytest.mark.multiprocess
def test_dpo_under_deepspeed_zero2_on_two_processes_equals_one_process(tiny_model_dir, tmp_path):
    """Real DeepSpeed ZeRO-2 (its CPU accelerator, 2 gloo processes under torchrun): one tree a rank against
    two trees in one process's batch; each tree holds one pair, so the pair mean is the same and so are the
    adapters. The reference log-probs are computed by the main process and read by the other."""
    pytest.importorskip("deepspeed", reason="deepspeed is in requirements-dev.txt")
    import torch
    from test_multigpu import ENV, TRAIN, tensors, torchrun

    pairs = pair_file(tmp_path / "pairs.jsonl")
    common = ["--stage", "dpo", "--model_local_dir", str(tiny_model_dir), "--train_file", str(pairs), "--report_to",
              "none", "--max_steps", "2", "--save_steps", "2", "--gradient_accumulation_steps", "1", "--learning_rate",
              "1e-3", "--no-do_eval", "--lr_scheduler_type", "constant", "--no-gradient_checkpointing",
              "--sample_cache_dir", str(tmp_path / "cache")]
    one = subprocess.run([sys.executable, str(TRAIN), *common, "--output_dir", str(tmp_path / "one"),
                          "--per_device_train_batch_size", "2"], capture_output=True, text=True, env=ENV, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    config = str(ROOT / "examples" / "deepspeed" / "zero2.json")
    two = subprocess.run([*torchrun(2), str(TRAIN), *common, "--output_dir", str(tmp_path / "two"),
                          "--per_device_train_batch_size", "1", "--deepspeed", config],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 个进程" in two.stdout and two.stdout.count("[完成]") == 1
    assert "读取已缓存的参考 log-prob" in two.stdout  # the one process's reference, reused: the same identity
    a, b = tensors(tmp_path / "one" / "lora_adapter"), tensors(tmp_path / "two" / "lora_adapter")
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if "lora_B" in k)  # it did train
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
