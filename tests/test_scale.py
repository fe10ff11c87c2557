"""Beyond one GPU and below one: DDP with two CPU processes (gloo); QLoRA refuses cleanly without CUDA."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from test_multigpu import torchrun
import train_psydt_lora
from psydt_lora.errors import run_cli

SCRIPT = ROOT / "LLM_fine_turning" / "train_psydt_lora.py"


@pytest.mark.multiprocess
def test_ddp_with_two_processes_shards_data_and_writes_one_adapter(tiny_model_dir, data_files, tmp_path):
    train, test = data_files
    out = tmp_path / "out"
    cmd = [*torchrun(2), str(SCRIPT),
           "--model_local_dir", str(tiny_model_dir), "--train_file", str(train), "--eval_file", str(test),
           "--output_dir", str(out), "--report_to", "none", "--max_steps", "4", "--save_steps", "2",
           "--logging_steps", "1", "--gradient_accumulation_steps", "1", "--sample_mode", "per_turn"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("[完成]") == 1  # only rank 0 writes and reports
    assert (out / "lora_adapter" / "adapter_model.safetensors").is_file()
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text("utf-8"))
    # 4 samples over 2 ranks, 1 per device per step: an epoch is 2 steps (a single process needs 4)
    assert state["log_history"][-1]["epoch"] == 2.0
    assert not list(out.glob(".write_test*"))


def cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


# these two are about machines without CUDA: on a GPU machine the same flags train instead of refusing
no_cuda_only = pytest.mark.skipif(cuda_here(), reason="checks the error a machine without CUDA gives")


@no_cuda_only
def test_qlora_without_cuda_is_a_clear_error(tiny_model_dir, data_files, capsys):
    train, _ = data_files
    rc = run_cli(train_psydt_lora.main, ["--model_local_dir", str(tiny_model_dir), "--train_file", str(train),
                                         "--no-do_eval", "--report_to", "none", "--load_in_4bit"])
    assert rc == 2 and "需要 NVIDIA GPU" in capsys.readouterr().err


@no_cuda_only
def test_flex_attention_without_cuda_is_a_clear_error(tiny_model_dir, data_files, tmp_path, capsys):
    train, _ = data_files
    rc = run_cli(train_psydt_lora.main, ["--model_local_dir", str(tiny_model_dir), "--train_file", str(train),
                                         "--no-do_eval", "--report_to", "none", "--output_dir", str(tmp_path / "o"),
                                         "--attn_implementation", "flex_attention"])
    assert rc == 2 and "只能在 CUDA GPU 上训练" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_deepspeed_config_must_exist(tiny_model_dir, data_files, capsys):
    train, _ = data_files
    rc = run_cli(train_psydt_lora.main, ["--model_local_dir", str(tiny_model_dir), "--train_file", str(train),
                                         "--deepspeed", "nope.json"])
    assert rc == 2 and "examples/deepspeed" in capsys.readouterr().err
    for name in ("zero2.json", "zero3.json"):
        cfg = json.loads((ROOT / "examples" / "deepspeed" / name).read_text("utf-8"))
        assert cfg["zero_optimization"]["stage"] in (2, 3)
