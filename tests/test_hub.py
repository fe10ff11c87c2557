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


# -- the probe before an optional download (the guard model) ---------------------------------------------
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")
HUB_VARS = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN")


@pytest.fixture
def plain_env(monkeypatch):
    for var in PROXY_VARS + HUB_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def stub():
    """A local HTTP server on a free port that answers every GET: a mirror, or a proxy."""
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def no_dns(*a, **k):
    import socket

    raise socket.gaierror(-3, "Temporary failure in name resolution")


def test_a_mirror_in_hf_endpoint_is_what_is_probed(plain_env, stub):
    import socket

    plain_env.setattr(socket, "getaddrinfo", lambda host, *a, **k: (
        no_dns() if host != "127.0.0.1" else [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(stub.rsplit(":", 1)[1])))]))
    assert hub.hub_unreachable("huggingface") == "连不上 huggingface.co（gaierror）"  # the default host: no DNS here
    plain_env.setenv("HF_ENDPOINT", stub)  # the mirror answers: reachable, the download is tried
    assert hub.hub_unreachable("huggingface") is None
    plain_env.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_unreachable("huggingface") == "已设置 HF_HUB_OFFLINE"


def test_a_mirror_that_is_down_is_named(plain_env, stub):
    import socket

    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()  # nothing listens there now
    plain_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free}")
    assert hub.hub_unreachable("huggingface", timeout=2) == f"连不上 127.0.0.1:{free}（ConnectionRefusedError）"


def test_modelscope_endpoint_variables_as_its_client_reads_them(plain_env, stub):
    assert hub.hub_endpoint("modelscope") == "https://modelscope.cn"
    plain_env.setenv("MODELSCOPE_DOMAIN", "www.modelscope.ai")  # the older variable: a bare host
    assert hub.hub_endpoint("modelscope") == "https://www.modelscope.ai"
    plain_env.setenv("MODELSCOPE_ENDPOINT", stub)  # the newer one wins
    assert hub.hub_endpoint("modelscope") == stub and hub.hub_unreachable("modelscope") is None


def test_behind_a_proxy_the_proxy_is_probed_not_the_hubs_dns(plain_env, stub):
    import socket

    port = int(stub.rsplit(":", 1)[1])
    plain_env.setattr(socket, "getaddrinfo", lambda host, *a, **k: (
        no_dns() if host != "127.0.0.1" else [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]))
    plain_env.setenv("HTTPS_PROXY", stub)  # no DNS for the hub here: the proxy resolves it
    assert hub.hub_unreachable("modelscope") is None
    plain_env.setenv("NO_PROXY", "modelscope.cn")  # ...unless the hub is exempt from the proxy
    assert hub.hub_unreachable("modelscope") == "连不上 modelscope.cn（gaierror）"


def test_a_failing_resolver_is_one_clear_line_and_no_traceback(tmp_path):
    """A real start with name resolution failing (an offline machine): the probe's thread prints nothing; the
    user reads one line saying the hub is unreachable and why."""
    import os
    import subprocess
    import sys

    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({"positive": ["我不想活了"]}, ensure_ascii=False), "utf-8")
    code = ("import socket, sys\n"
            "def no_dns(*a, **k):\n    raise socket.gaierror(-3, 'Temporary failure in name resolution')\n"
            "socket.getaddrinfo = no_dns\n"
            "sys.argv = ['inference_psydt_lora.py', '--safety_eval', sys.argv[1], '--safety_model', 'Qwen/Qwen3Guard-Gen-0.6B']\n"
            "from psydt_lora.infer_cli import cli\nsys.exit(cli())\n")
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS + HUB_VARS}
    res = subprocess.run([sys.executable, "-c", code, str(cases)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "Exception in thread" not in res.stderr, res.stderr
    said = [line for line in res.stdout.splitlines() if "连不上" in line and not line.startswith("{")]
    assert len(said) == 1 and "连不上 modelscope.cn（gaierror）" in said[0] and "没有尝试下载" in said[0], res.stdout
    assert not (tmp_path / "Qwen").exists()
