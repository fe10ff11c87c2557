"""Reliability: killed runs resume, Ctrl-C saves, bad input never crashes, outputs are never half-written."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DIALOGUES, ROOT
import train_psydt_lora
from psydt_lora.errors import run_cli

SCRIPT = ROOT / "LLM_fine_turning" / "train_psydt_lora.py"


def train_cmd(model_dir, train, out, *extra):
    return [sys.executable, str(SCRIPT), "--model_local_dir", str(model_dir), "--train_file", str(train),
            "--no-do_eval", "--output_dir", str(out), "--report_to", "none", "--max_steps", "40", "--save_steps", "5",
            "--logging_steps", "5", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
            "--learning_rate", "5e-3", *extra]


def adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def wait_for(path, proc, timeout=120):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, "training ended before it could be interrupted"
        assert time.time() - start < timeout
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_and_ends_with_the_same_adapter(tiny_model_dir, data_files, tmp_path):
    import torch

    train, _ = data_files
    env = {**os.environ, "PYTHONPATH": ""}
    ref = subprocess.run(train_cmd(tiny_model_dir, train, tmp_path / "ref"), capture_output=True, text=True, env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(tiny_model_dir, train, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_for(out / "checkpoint-10" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "lora_adapter").exists()
    # a checkpoint cut short by a kill (no trainer_state.json) must never be picked up
    broken = out / "checkpoint-35"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")

    again = subprocess.run(train_cmd(tiny_model_dir, train, out), capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "跳过不完整的检查点" in again.stdout and "[续训] 从检查点" in again.stdout
    resumed_from = int(again.stdout.split("checkpoint-")[2].split()[0].rstrip("（"))
    assert 10 <= resumed_from < 35
    state = json.loads((out / "checkpoint-40" / "trainer_state.json").read_text("utf-8"))
    assert state["global_step"] == 40
    a, b = adapter_tensors(tmp_path / "ref" / "lora_adapter"), adapter_tensors(out / "lora_adapter")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tiny_model_dir, data_files, tmp_path):
    train, _ = data_files
    out = tmp_path / "out"
    log = tmp_path / "log.txt"
    with open(log, "w") as sink:
        proc = subprocess.Popen(train_cmd(tiny_model_dir, train, out, "--max_steps", "100000", "--save_steps", "100000"),
                                stdout=sink, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ""})
        # press Ctrl-C mid-run: once the log line of step 5 is out (steps log every 5, the first one too),
        # the handler is installed and the run is past its first steps -- a readiness line, not a guessed delay
        start = time.time()
        while "[日志] 第 5/" not in log.read_text() and time.time() - start < 120:
            assert proc.poll() is None
            time.sleep(0.1)
        assert "[日志] 第 5/" in log.read_text(), "training never reached its fifth step"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    stdout = log.read_text()
    assert proc.returncode == 130, stderr[-2000:]
    from psydt_lora.train.checkpoints import find_checkpoint

    saved = find_checkpoint(out, "auto")
    assert saved is not None
    assert f"已保存检查点 {saved}。用同样的命令重新运行即可继续训练" in stdout  # the checkpoint, not just the folder
    assert not (out / "lora_adapter").exists()


def test_format_mixups_are_refused(tiny_model_dir, data_files, tmp_path, capsys):
    train, test = data_files
    rc = run_cli(train_psydt_lora.main, ["--model_local_dir", str(tiny_model_dir), "--train_file", str(test),
                                         "--no-do_eval", "--dry_run"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--train_file {test}" in err and "single-turn split 测试格式" in err and "Traceback" not in err
    many = tmp_path / "train3.json"
    many.write_text(json.dumps(DIALOGUES * 2, ensure_ascii=False), "utf-8")
    rc = run_cli(train_psydt_lora.main, ["--model_local_dir", str(tiny_model_dir), "--train_file", str(train),
                                         "--eval_file", str(many), "--dry_run"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--eval_file {many}" in err and "看起来是训练格式" in err


def test_a_cut_short_partial_line_is_ignored_on_resume(tiny_model_dir, memorised_adapter, data_files, tmp_path):
    import inference_psydt_lora

    _, test = data_files
    out = tmp_path / "r.json"
    argv = ["--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--mode", "test",
            "--test_file", str(test), "--test_output_file", str(out), "--no-do_sample", "--max_new_tokens", "40"]
    assert inference_psydt_lora.main(argv) == 0
    full = json.loads(out.read_text("utf-8"))
    # simulate a kill after the first item, then a last line cut short by the kill
    out.unlink()
    partial = out.with_name(out.name + ".partial.jsonl")
    argv_crash = list(argv)
    import psydt_lora.evaluation.batch_run as bt

    original = bt.generate_batch
    calls = {"n": 0}

    def crash_after_first(*a, **k):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return original(*a, **k)

    bt.generate_batch = crash_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            inference_psydt_lora.main(argv_crash + ["--batch_size", "1"])
    finally:
        bt.generate_batch = original
    with open(partial, "a", encoding="utf-8") as f:
        f.write('{"position": 3, "index": 3, "resp')
    assert inference_psydt_lora.main(argv + ["--batch_size", "1"]) == 0
    rep = json.loads(out.read_text("utf-8"))
    assert sorted(r["index"] for r in rep["results"]) == [0, 1, 2, 3]
    assert [r["response"] for r in rep["results"]] == [r["response"] for r in full["results"]]
    assert not partial.exists()


# -- property-based: whatever the data file holds, the CLI trains or stops with a clear message --------------
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
role = st.sampled_from(["system", "user", "assistant", "bot", "", None, 3])
content = st.one_of(st.text(max_size=30), st.just(""), st.just("好" * 5000), st.integers(), st.none())
message = st.one_of(st.fixed_dictionaries({"role": role, "content": content}), json_value)
record = st.one_of(
    st.fixed_dictionaries({"id": st.integers() | st.text(max_size=5), "normalizedTag": st.text(max_size=4) | st.none(),
                           "messages": st.lists(message, max_size=6)}),
    json_value,
)


def file_bytes(draw_records, mode, cut):
    if mode == "json":
        data = json.dumps(draw_records, ensure_ascii=False).encode("utf-8")
    elif mode == "jsonl":
        data = "\n".join(json.dumps(r, ensure_ascii=False) for r in draw_records).encode("utf-8")
    else:  # non-UTF-8 bytes
        data = json.dumps(draw_records, ensure_ascii=False).encode("utf-8") + b"\xff\xfe"
    return data[: int(len(data) * cut)] if cut < 1 else data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(record, max_size=4), mode=st.sampled_from(["json", "jsonl", "bytes"]),
       cut=st.sampled_from([1, 1, 1, 0.5, 0.9]))
def test_random_data_files_train_or_stop_cleanly(tiny_model_dir, tmp_path_factory, capsys, records, mode, cut):
    folder = tmp_path_factory.mktemp("prop")
    path = folder / "data.json"
    path.write_bytes(file_bytes(records, mode, cut))
    dump = folder / "samples.jsonl"
    rc = run_cli(train_psydt_lora.main, ["--model_local_dir", str(tiny_model_dir), "--train_file", str(path),
                                         "--no-do_eval", "--dry_run", "--max_length", "256", "--dump_samples", str(dump)])
    err = capsys.readouterr().err
    assert rc in (0, 2)
    if rc == 2:
        assert err.startswith("错误：") and str(path) in err or "没有生成任何训练样本" in err
        assert not dump.exists()  # nothing half-written
    else:
        lines = dump.read_text("utf-8").splitlines()
        assert lines and all(json.loads(line)["labels"] for line in lines)


def test_valid_files_of_both_shapes_give_the_same_samples(tiny_model_dir, tiny_tokenizer, tmp_path):
    """A JSON array and JSON Lines of the same dialogues: the dry run writes the same training samples, one
    shared_prefix pack per dialogue, supervising exactly its replies (each closed by <|im_end|>)."""
    dumps = []
    for name, obj in [("a.json", DIALOGUES), ("b.jsonl", "\n".join(json.dumps(d, ensure_ascii=False) for d in DIALOGUES))]:
        p = tmp_path / name
        p.write_text(obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False), "utf-8")
        dump = tmp_path / f"{name}.samples.jsonl"
        assert run_cli(train_psydt_lora.main, ["--model_local_dir", str(tiny_model_dir), "--train_file", str(p),
                                               "--no-do_eval", "--dry_run", "--dump_samples", str(dump)]) == 0
        dumps.append([json.loads(line) for line in dump.read_text("utf-8").splitlines()])
    assert dumps[0] == dumps[1] and len(dumps[0]) == len(DIALOGUES)
    for sample, dialogue in zip(dumps[0], DIALOGUES):
        supervised = tiny_tokenizer.decode([t for t in sample["labels"] if t != -100])
        assert supervised == "".join(m["content"] + "<|im_end|>" for m in dialogue["messages"] if m["role"] == "assistant")


@pytest.mark.slow
@pytest.mark.parametrize("stderr_to", ["file", "pipe"])
def test_ctrl_c_with_the_log_reader_gone_still_saves_and_exits_130(tiny_model_dir, data_files, tmp_path, stderr_to):
    """`python train.py 2>&1 | tee log` and Ctrl-C: tee ends too. Its pipe closed, the run still finishes its step,
    saves the checkpoint and exits 130 -- the handler's message and every later write must not raise."""
    train, _ = data_files
    out, errors = tmp_path / "out", tmp_path / "stderr.txt"
    cmd = train_cmd(tiny_model_dir, train, out, "--max_steps", "100000", "--save_steps", "100000", "--logging_steps", "1")
    with open(errors, "w") as err_sink:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_sink if stderr_to == "file" else subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": ""})
        seen = b""
        while b"[\xe6\x97\xa5\xe5\xbf\x97] \xe7\xac\xac 3/" not in seen:  # "[日志] 第 3/": the handler is installed
            chunk = proc.stdout.read1(65536)
            assert chunk, "training ended before it could be interrupted"
            seen += chunk
        proc.stdout.close()  # the reader is gone: every later write to the pipe fails
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    from psydt_lora.train.checkpoints import checkpoint_complete, find_checkpoint

    said = errors.read_text("utf-8")
    assert code == 130, said[-2000:]
    saved = find_checkpoint(out, "auto")
    assert saved is not None and checkpoint_complete(saved)
    assert "Traceback" not in said and "BrokenPipeError" not in said
    if stderr_to == "file":
        assert "[中断] 收到 SIGINT" in said  # the handler writes to stderr
