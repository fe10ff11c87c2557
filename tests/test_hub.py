"""Downloads: the hub call is replaced at the boundary; presence checks run for real."""
import json
import logging
from pathlib import Path

import pytest

import modelscope
import modelscope.hub.file_download as ms_files
from psydt_lora import hub
from psydt_lora.errors import PsyDTError


def fake_model_snapshot(calls):
    def snapshot_download(model_id=None, local_dir=None, **kw):
        import shutil

        calls.append({"model_id": model_id, "local_dir": local_dir, **kw})
        shutil.copytree(fake_model_snapshot.source, local_dir, dirs_exist_ok=True)
        return local_dir

    return snapshot_download


def test_nothing_is_downloaded_when_the_model_is_there(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(modelscope, "snapshot_download", lambda **kw: pytest.fail("network touched"))
    assert hub.ensure_model("Qwen/Qwen3-1.7B", tiny_model_dir) == tiny_model_dir


def test_missing_model_is_downloaded_into_exactly_that_folder(tiny_model_dir, tmp_path, monkeypatch):
    calls = []
    fake_model_snapshot.source = tiny_model_dir
    monkeypatch.setattr(modelscope, "snapshot_download", fake_model_snapshot(calls))
    target = tmp_path / "Qwen" / "Qwen3-1.7B"
    assert hub.ensure_model("Qwen/Qwen3-1.7B", target) == target
    assert calls[0]["model_id"] == "Qwen/Qwen3-1.7B" and calls[0]["local_dir"] == str(target)
    assert "*.bin" in calls[0]["ignore_patterns"]  # never fetch pickle weights
    assert hub.model_problems(target) == []


def test_model_folder_without_complete_weights_is_not_usable(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a download cut short
    assert any("不完整" in p for p in hub.model_problems(folder))
    weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    assert any("pickle" in p for p in hub.model_problems(folder))


def test_failed_download_says_repo_folder_and_what_to_do(tmp_path, monkeypatch, caplog, capsys):
    def offline(**kw):
        Path(kw["local_dir"]).mkdir(parents=True, exist_ok=True)  # the hub makes the folder, then fails
        logging.getLogger("modelscope").warning("Retrying download (English noise)")
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(modelscope, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING), pytest.raises(PsyDTError) as err:
        hub.ensure_model("Qwen/Qwen3-1.7B", "Qwen/Qwen3-1.7B")
    msg = str(err.value)
    assert "Qwen/Qwen3-1.7B" in msg and "本地文件夹 ./Qwen/Qwen3-1.7B" in msg and "手动" in msg
    assert "本地文件夹 ./Qwen/Qwen3-1.7B" in capsys.readouterr().out  # said before the download starts
    assert "Retrying" not in caplog.text  # the hub's English retry warnings are not shown before ours
    assert not (tmp_path / "Qwen").exists()  # no empty folder left behind


def test_partly_downloaded_model_is_kept_for_the_hub_to_resume(tmp_path, monkeypatch):
    def cut_off(**kw):
        (Path(kw["local_dir"]) / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (Path(kw["local_dir"]) / "model.safetensors").write_bytes(b"x" * 100)
        raise ConnectionError("reset by peer")

    monkeypatch.setattr(modelscope, "snapshot_download", cut_off)
    with pytest.raises(PsyDTError):
        hub.ensure_model("Qwen/Qwen3-1.7B", tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_dataset_files_download_only_what_is_missing(tmp_path, monkeypatch):
    calls = []

    def dataset_file_download(dataset_id, file_path, local_dir=None, **kw):
        calls.append((dataset_id, file_path))
        out = tmp_path / "dl" / file_path
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps([{"messages": []}]), "utf-8")
        return str(out)

    monkeypatch.setattr(ms_files, "dataset_file_download", dataset_file_download)
    folder = tmp_path / "data" / "PsyDTCorpus"
    folder.mkdir(parents=True)
    (folder / hub.TEST_FILE).write_text("[]", "utf-8")  # present and complete
    got = hub.ensure_dataset_file("YIRONGCHEN/PsyDTCorpus", folder, hub.TRAIN_FILE)
    assert got == folder / hub.TRAIN_FILE and got.is_file()
    assert hub.ensure_dataset_file("YIRONGCHEN/PsyDTCorpus", folder, hub.TEST_FILE) == folder / hub.TEST_FILE
    assert calls == [("YIRONGCHEN/PsyDTCorpus", hub.TRAIN_FILE)]
    assert not list(folder.glob(".*tmp"))  # no temp leftovers


def test_truncated_dataset_file_is_fetched_again_and_kept_aside(tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / hub.TRAIN_FILE).write_text('[{"messages": [', "utf-8")
    assert "不完整" in hub.dataset_file_problem(folder / hub.TRAIN_FILE)

    def dataset_file_download(dataset_id, file_path, local_dir=None, **kw):
        (tmp_path / "new.json").write_text("[]", "utf-8")
        return str(tmp_path / "new.json")

    monkeypatch.setattr(ms_files, "dataset_file_download", dataset_file_download)
    hub.ensure_dataset_file("r", folder, hub.TRAIN_FILE)
    assert (folder / hub.TRAIN_FILE).read_text("utf-8") == "[]"
    assert (folder / (hub.TRAIN_FILE + ".bad")).read_text("utf-8") == '[{"messages": ['


def test_dataset_download_failure_is_clear_and_writes_nothing(tmp_path, monkeypatch):
    def fail(**kw):
        raise TimeoutError("timed out")

    monkeypatch.setattr(ms_files, "dataset_file_download", lambda *a, **kw: fail())
    with pytest.raises(PsyDTError, match=r"YIRONGCHEN/PsyDTCorpus.*PsyDTCorpus_train_mulit_turn_packing\.json.*手动"):
        hub.ensure_dataset_file("YIRONGCHEN/PsyDTCorpus", tmp_path / "data" / "PsyDTCorpus", hub.TRAIN_FILE)
    assert list(tmp_path.iterdir()) == []  # not even the dataset folder it would have created


def test_huggingface_hub_is_used_the_same_way(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub

    calls = []

    def hf_hub_download(repo_id, filename, repo_type=None, local_dir=None, **kw):
        calls.append((repo_id, filename, repo_type))
        p = tmp_path / "hf" / filename
        p.parent.mkdir(exist_ok=True)
        p.write_text("[]", "utf-8")
        return str(p)

    def snapshot_download(repo_id=None, local_dir=None, **kw):
        calls.append((repo_id, local_dir, kw.get("ignore_patterns")))
        shutil.copytree(tiny_model_dir, local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(modelscope, "snapshot_download", lambda **kw: pytest.fail("the other hub was asked"))
    hub.ensure_dataset_file("YIRONGCHEN/PsyDTCorpus", tmp_path / "d", hub.TEST_FILE, hub="huggingface")
    assert calls == [("YIRONGCHEN/PsyDTCorpus", hub.TEST_FILE, "dataset")]
    target = tmp_path / "Qwen" / "Qwen3-1.7B"
    assert hub.ensure_model("Qwen/Qwen3-1.7B", target, hub="huggingface") == target
    repo, folder, ignored = calls[1]
    assert (repo, folder) == ("Qwen/Qwen3-1.7B", str(target)) and "*.bin" in ignored  # never pickle weights
    assert hub.model_problems(target) == []
    assert hub.ensure_model("Qwen/Qwen3-1.7B", target, hub="huggingface") == target and len(calls) == 2  # present now


def test_known_file_with_the_published_hash_is_accepted_without_parsing(tmp_path, monkeypatch):
    import hashlib

    p = tmp_path / hub.TEST_FILE
    p.write_bytes(b"not json but known")
    monkeypatch.setitem(hub.KNOWN_FILES, hub.TEST_FILE, (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()))
    assert hub.dataset_file_problem(p) is None
