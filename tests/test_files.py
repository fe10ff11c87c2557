"""File modes: what this project writes gets the modes the umask gives (0644 files / 0755 folders under 022),
through the real write paths -- atomic writes, written folders, the merged export and its Modelfile, a batch
test's result, report and chart -- and stays private under umask 077."""
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

import inference_psydt_lora
from psydt_lora.files import atomic_write_bytes, atomic_write_json, atomic_write_text, temp_dir_beside, write_dir


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def modes_under(folder: Path) -> dict:
    """{path relative to `folder` ("." for itself): mode} of every file and folder in it."""
    out = {".": mode(folder)}
    for p in folder.rglob("*"):
        out[str(p.relative_to(folder))] = mode(p)
    return out


def fill_like_the_writers_we_call(tmp: Path) -> None:
    """What libraries leave in a folder we write: a 0600 file (safetensors, mkstemp), a 0700 folder (mkdtemp),
    an executable (a converter's script), a plain file."""
    fd = os.open(tmp / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"weights")
    os.close(fd)
    sub = Path(tempfile.mkdtemp(dir=tmp))
    (sub / "inner.json").write_text("{}", "utf-8")
    os.chmod(sub / "inner.json", 0o600)
    (tmp / "run.sh").write_text("#!/bin/sh\n", "utf-8")
    os.chmod(tmp / "run.sh", 0o700)
    (tmp / "README.md").write_text("card", "utf-8")


def test_atomic_writes_and_written_folders_honour_umask_022(tmp_path):
    with umask(0o022):
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "metrics.json", {"loss": 1.0})
        atomic_write_bytes(tmp_path / "loss_curve.png", b"\x89PNG")
        atomic_write_text(tmp_path / "private.json", "{}", mode=0o600)  # the chat transcripts ask for this
        assert mode(temp_dir_beside(tmp_path / "x" / "folder")) == 0o755
        write_dir(tmp_path / "merged", fill_like_the_writers_we_call)
        write_dir(tmp_path / "merged", fill_like_the_writers_we_call)  # replacing an older folder: the same
    assert [mode(tmp_path / n) for n in ("a.txt", "metrics.json", "loss_curve.png")] == [0o644] * 3
    assert mode(tmp_path / "private.json") == 0o600
    got = modes_under(tmp_path / "merged")
    inner = next(k for k in got if k.endswith("inner.json"))
    assert got == {".": 0o755, "model.safetensors": 0o644, inner.split("/")[0]: 0o755, inner: 0o644,
                   "run.sh": 0o755, "README.md": 0o644}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_under_umask_077_everything_stays_private(tmp_path):
    with umask(0o077):
        atomic_write_json(tmp_path / "result.json", {"results": []})
        write_dir(tmp_path / "merged", fill_like_the_writers_we_call)
    assert mode(tmp_path / "result.json") == 0o600
    got = modes_under(tmp_path / "merged")
    assert got.pop("run.sh") == 0o700
    assert set(got.values()) == {0o600, 0o700} and got["."] == 0o700 and got["model.safetensors"] == 0o600


def test_the_merged_export_and_its_modelfile_are_readable_by_others_under_umask_022(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from psydt_lora.export.merged import save_merged
    from psydt_lora.export.modelfile import write_modelfile

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    merged = tmp_path / "merged"
    with umask(0o022):
        save_merged(model, tokenizer, merged, system_prompt="你是心理咨询师。", card="# card\n")
        modelfile = write_modelfile(tmp_path / "gguf", "model.gguf", None, merged)
    got = modes_under(merged)
    assert "model.safetensors" in got and "README.md" in got  # safetensors itself writes 0600
    assert got.pop(".") == 0o755 and set(got.values()) == {0o644}, got
    assert mode(modelfile) == 0o644


def test_a_batch_test_result_its_report_and_chart_are_0644_under_umask_022(tiny_model_dir, data_files, tmp_path):
    _, test = data_files
    out = tmp_path / "results" / "test.json"
    with umask(0o022):
        assert inference_psydt_lora.main(["--mode", "test", "--model_path", str(tiny_model_dir), "--no_adapter",
                                          "--test_file", str(test), "--test_output_file", str(out),
                                          "--max_test_items", "2", "--max_new_tokens", "3", "--no-do_sample"]) == 0
    written = sorted(p.name for p in out.parent.iterdir())
    assert "test.json" in written and any(n.endswith(".png") for n in written) and any(n.endswith(".md") for n in written)
    assert {p.name: mode(p) for p in out.parent.iterdir()} == {n: 0o644 for n in written}
