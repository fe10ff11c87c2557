"""Beyond one process: DDP in the default shared-prefix mode equals one process, every rank stops together
on a signal, DeepSpeed's checkpoint layout resumes, and local mistakes are caught before anything slow.
Multi-process tests run 2 gloo CPU processes under torchrun, whose store binds port 0 and tells its workers."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from psydt_lora.train import checkpoints as T
from psydt_lora.errors import PsyDTError

TRAIN = ROOT / "LLM_fine_turning" / "train_psydt_lora.py"
INFER = ROOT / "LLM_fine_turning" / "inference_psydt_lora.py"
ENV = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int) -> list[str]:
    """The README's multi-node recipe with one node: c10d rendezvous on port 0 -- the launcher's own store
    binds a free port and its workers read it from there (as `torchrun --standalone` does)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:0", "--rdzv_id", "psydt-test"]


def run_retrying_taken_port(cmd, tries: int = 3) -> subprocess.CompletedProcess:
    """accelerate's launcher picks its port by binding and releasing it, so another process can take it
    before the workers bind it: that failure (and only that one) is retried."""
    for _ in range(tries):
        res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
        if res.returncode == 0 or "Address already in use" not in res.stderr + res.stdout:
            return res
    return res


def train_args(model_dir, train, out, *extra):
    return [str(TRAIN), "--model_local_dir", str(model_dir), "--train_file", str(train), "--no-do_eval",
            "--output_dir", str(out), "--report_to", "none", "--lora_dropout", "0", "--learning_rate", "1e-2",
            "--gradient_accumulation_steps", "1", "--no-gradient_checkpointing", *extra]


def tensors(adapter_dir):
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


@pytest.mark.multiprocess
def test_shared_prefix_under_ddp_equals_one_process(tiny_model_dir, data_files, tmp_path):
    """Two packs (one per dialogue), two steps: one process takes both packs per step, each of two ranks
    takes one. The Trainer averages tokens across ranks, so the gradients -- and the adapters -- agree."""
    import torch

    train, _ = data_files
    one = subprocess.run([sys.executable, *train_args(tiny_model_dir, train, tmp_path / "one", "--max_steps", "2",
                                                      "--per_device_train_batch_size", "2")],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*torchrun(2), *train_args(tiny_model_dir, train, tmp_path / "two", "--max_steps", "2",
                                                    "--per_device_train_batch_size", "1")],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "shared_prefix 打包" in two.stdout and two.stdout.count("[完成]") == 1
    assert "2 个进程" in two.stdout and "× 2（进程）= 2" in two.stdout
    a, b = tensors(tmp_path / "one" / "lora_adapter"), tensors(tmp_path / "two" / "lora_adapter")
    assert a.keys() == b.keys()
    ref = tensors(tmp_path / "one" / "checkpoint-2")
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if "lora_B" in k)  # it did train
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
        assert torch.equal(a[k], ref[k])


def interrupt(proc, log_dir, who) -> str:
    """Wait until both ranks train, send SIGTERM to the job or to rank 1 alone; the launcher's output."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        rank_logs = sorted(log_dir.rglob("stdout.log"))
        if len(rank_logs) == 2 and "[日志] 第 3/" in rank_logs[0].read_text("utf-8", "replace"):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be interrupted"
    if who in ("job", "ctrl-c"):
        os.killpg(proc.pid, signal.SIGTERM if who == "job" else signal.SIGINT)
    else:
        os.kill(worker_pid(proc.pid, 1), signal.SIGTERM)
    return proc.communicate(timeout=120)[0]


def worker_pid(agent_pid: int, rank: int) -> int:
    """The torchrun worker process of `rank` (found through /proc: its RANK environment variable)."""
    todo = [agent_pid]
    while todo:
        pid = todo.pop()
        for task in os.listdir(f"/proc/{pid}/task"):
            todo += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and pid != agent_pid:
            return pid
    raise AssertionError(f"no worker of rank {rank}")


@pytest.mark.multiprocess
@pytest.mark.parametrize("who", ["job", "rank1", "ctrl-c"])
def test_sigterm_under_torchrun_stops_every_rank_at_one_step_and_resumes(tiny_model_dir, data_files, tmp_path, who):
    """`job`: the whole job gets SIGTERM (a cluster's preemption). `rank1`: only one rank gets it -- the
    other must still stop at the same step instead of waiting for it forever. `ctrl-c`: SIGINT to the
    whole process group, as a terminal's Ctrl-C does."""
    train, _ = data_files
    out = tmp_path / "out"
    log_dir = tmp_path / "logs"
    cmd = [*torchrun(2), "--log-dir", str(log_dir), "--redirects", "3",
           *train_args(tiny_model_dir, train, out, "--max_steps", "400", "--save_steps", "1000", "--logging_steps", "1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            start_new_session=True)
    try:
        agent_output = interrupt(proc, log_dir, who)
    finally:
        if proc.poll() is None:  # a hang must not outlive the test
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, agent_output[-3000:]
    if who == "rank1":  # the launcher's report: both ranks left with SIGTERM's exit code, neither hung
        assert agent_output.count("exitcode  : 143") == 2, agent_output[-3000:]
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and T.checkpoint_complete(checkpoints[0])  # one complete checkpoint
    step = T.checkpoint_step(checkpoints[0])
    assert 3 <= step < 400
    logs = [p.read_text("utf-8", "replace") for p in sorted(log_dir.rglob("stdout.log"))]
    assert sum(t.count("用同样的命令重新运行即可继续训练") for t in logs) == 1  # said once, by rank 0
    errs = "".join(p.read_text("utf-8", "replace") for p in log_dir.rglob("stderr.log"))
    assert "Traceback" not in errs
    assert not (out / "lora_adapter").exists()
    again = subprocess.run([*torchrun(2), *train_args(tiny_model_dir, train, out, "--max_steps", str(step + 2),
                                                      "--save_steps", "1000")],
                           capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"从检查点 {checkpoints[0]}" in again.stdout
    assert (out / "lora_adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.multiprocess
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_resumes_from_its_own_layout_and_matches_one_process(tiny_model_dir, data_files, tmp_path, zero):
    """Real DeepSpeed (its CPU accelerator, 2 processes): stop after 2 of 4 steps, rerun, and the resumed
    run's adapter -- saved through the Trainer's gathering save under ZeRO-3 -- equals one process's.
    Every launch must exit 0: ZeRO-3 once aborted a rank at exit about 1 run in 6 (gloo's threads against
    interpreter shutdown; see train_cli.leave_without_finalizing). DeepSpeed is imported by the Trainer
    whenever it is installed; told that the run is on CPU it must not guess aloud."""
    pytest.importorskip("deepspeed", reason="deepspeed is in requirements-dev.txt")
    import torch

    train, _ = data_files
    common = ("--save_steps", "2", "--lr_scheduler_type", "constant")
    one = subprocess.run([sys.executable, *train_args(tiny_model_dir, train, tmp_path / "one", "--max_steps", "4",
                                                      "--per_device_train_batch_size", "2", *common)],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "Setting accelerator to CPU" not in one.stdout + one.stderr  # a run without --deepspeed
    out = tmp_path / "ds"
    config = str(ROOT / "examples" / "deepspeed" / f"{zero}.json")
    for steps in ("2", "4"):
        res = subprocess.run([*torchrun(2), *train_args(tiny_model_dir, train, out, "--max_steps", steps, *common,
                                                        "--deepspeed", config)],
                             capture_output=True, text=True, env=ENV, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "Setting accelerator to CPU" not in res.stdout + res.stderr
    assert T.optimizer_layout(out / "checkpoint-2") == "deepspeed"  # global_step2/ + latest, no optimizer.pt
    assert res.stdout.count(f"从检查点 {out / 'checkpoint-2'}") == 1  # resumed, said once
    a, b = tensors(tmp_path / "one" / "lora_adapter"), tensors(out / "lora_adapter")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def deepspeed_layout(checkpoint, tag):
    """Rewrite a plain checkpoint into the layout the Trainer writes under DeepSpeed: no optimizer.pt or
    scheduler.pt; a `latest` file naming global_stepN/ with the engine's model and optimizer shards."""
    (checkpoint / "optimizer.pt").unlink()
    (checkpoint / "scheduler.pt").unlink()
    shards = checkpoint / tag
    shards.mkdir()
    (shards / "mp_rank_00_model_states.pt").write_bytes(b"model")
    for rank in (0, 1):
        (shards / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"optim")
    (checkpoint / "latest").write_text(tag)


def test_deepspeed_checkpoints_are_found_and_accepted(tiny_model_dir, data_files, tmp_path):
    import train_psydt_lora

    train, _ = data_files
    out = tmp_path / "out"
    argv = train_args(tiny_model_dir, train, out, "--max_steps", "2", "--save_steps", "1")[1:]
    assert train_psydt_lora.main(argv) == 0
    for name in ("checkpoint-1", "checkpoint-2"):
        deepspeed_layout(out / name, "global_step" + name.split("-")[1])
    assert T.find_checkpoint(out, "auto") == str(out / "checkpoint-2")  # auto-resume picks it
    assert T.find_checkpoint(out, str(out / "checkpoint-1")) == str(out / "checkpoint-1")  # an explicit path too
    # ZeRO-3 without 16-bit gathering keeps the adapter only in the shards: still complete
    (out / "checkpoint-1" / "adapter_model.safetensors").unlink()
    assert T.checkpoint_complete(out / "checkpoint-1")
    # a shard cut short, or `latest` naming a missing folder: not complete, skipped by auto-resume
    (out / "checkpoint-2" / "global_step2" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert not T.checkpoint_complete(out / "checkpoint-2")
    assert T.find_checkpoint(out, "auto") == str(out / "checkpoint-1")
    (out / "checkpoint-1" / "latest").write_text("global_step9")
    with pytest.raises(PsyDTError, match="不是完整的检查点"):
        T.find_checkpoint(out, str(out / "checkpoint-1"))


def test_a_mistyped_adapter_fails_at_once_before_any_download(tiny_model_dir, tmp_path):
    res = subprocess.run([sys.executable, str(INFER), "--model_path", str(tiny_model_dir), "--adapter_path",
                          str(tmp_path / "typo"), "--mode", "test", "--dataset_dir", str(tmp_path / "data")],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 2 and str(tmp_path / "typo") in res.stderr and "Traceback" not in res.stderr
    assert "[下载]" not in res.stdout and not (tmp_path / "data").exists()  # the test split was not fetched


def test_training_checks_local_files_before_fetching_the_model(tmp_path):
    res = subprocess.run([sys.executable, str(TRAIN), "--model_local_dir", str(tmp_path / "Qwen"), "--train_file",
                          str(tmp_path / "typo.json"), "--no-do_eval"],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 2 and "typo.json" in res.stderr
    assert "[下载]" not in res.stdout and not (tmp_path / "Qwen").exists()
    bad_out = tmp_path / "file"
    bad_out.write_text("x")
    res = subprocess.run([sys.executable, str(TRAIN), "--model_local_dir", str(tmp_path / "Qwen"), "--no-do_eval",
                          "--output_dir", str(bad_out / "out")], capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 2 and "--output_dir" in res.stderr and "[下载]" not in res.stdout


@pytest.mark.multiprocess
def test_the_fsdp_recipe_runs_here_as_ddp_and_says_so(tiny_model_dir, data_files, tmp_path):
    """accelerate enables FSDP only for GPU-type runs: on CPU processes the README's FSDP command falls back
    to DDP. It must still train and save one whole adapter, and say that it is not sharding."""
    train, _ = data_files
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "examples" / "accelerate" / "fsdp.yaml"), "--main_process_port", "0",
           *train_args(tiny_model_dir, train, out, "--max_steps", "2", "--save_steps", "1")]
    res = run_retrying_taken_port(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "FSDP 需要 GPU" in res.stdout and res.stdout.count("[完成]") == 1
    assert T.optimizer_layout(out / "checkpoint-2") == "plain"  # not sharded: what actually ran is DDP
    assert (out / "lora_adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "lora_adapter" / "training_args.bin").exists()  # no pickle in what users share


def test_a_launched_worker_runs_its_exit_handlers_then_leaves_without_interpreter_shutdown(tmp_path):
    """Under a launcher (WORLD_SIZE > 1) the script ends its process once the exit handlers have run (SwanLab
    finishes its run there), keeping the exit code and the output: interpreter shutdown is where gloo's
    threads made ZeRO-3 abort. A thread still running would hold up a normal shutdown, not this exit."""
    marker = tmp_path / "atexit.txt"
    code = ("import atexit, sys, threading, train_psydt_lora\n"
            "marker = sys.argv[1]\n"
            "atexit.register(lambda: open(marker, 'w').write('finished'))\n"
            "threading.Thread(target=threading.Event().wait).start()  # never ends\n"
            "sys.argv = [sys.argv[0], *sys.argv[2:]]\n"
            "sys.exit(train_psydt_lora.cli())\n")
    res = subprocess.run([sys.executable, "-c", code, str(marker), "--model_local_dir", str(tmp_path / "Qwen"),
                          "--train_file", str(tmp_path / "typo.json"), "--no-do_eval"],
                         capture_output=True, text=True, timeout=120,
                         env={**ENV, "PYTHONPATH": str(ROOT / "LLM_fine_turning"), "WORLD_SIZE": "2", "RANK": "0"})
    assert res.returncode == 2 and "typo.json" in res.stderr  # the message and the code survive the early exit
    assert marker.read_text() == "finished"
