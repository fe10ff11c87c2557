"""Fetching the base model, the PsyDTCorpus files and other datasets by id, from ModelScope (default) or Hugging Face.

Nothing is downloaded when the files are already in place: ModelScope never falls back to local
files by itself and takes ~20 s to fail offline, so presence is checked here first.
"""
import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import struct
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from psydt_lora.errors import PsyDTError
from psydt_lora.files import atomic_write_json, load_records, temp_dir_beside, user_cache_dir, write_dir

TRAIN_FILE = "PsyDTCorpus_train_mulit_turn_packing.json"  # sic: the dataset's own spelling
TEST_FILE = "PsyDTCorpus_test_single_turn_split.json"
# Known good files: (size in bytes, sha256), to tell a partial or corrupt download.
KNOWN_FILES = {
    TRAIN_FILE: (50_092_559, "517fabb22502b84de72ff1d62c7efea0bd16f41cf0939d2cd1d52d285c396345"),
    TEST_FILE: (29_182_406, "5b4eeb46721acbf5e9807fcf46902487855cbcd1ed45770b92f27ab1be95207d"),
}
HUBS = ("modelscope", "huggingface")
HUB_SITES = {"modelscope": "https://modelscope.cn", "huggingface": "https://huggingface.co"}
PROBE_TIMEOUT_S = 3.0  # one connection attempt to the hub before an optional download (the guard model)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "original/*")
SOURCE_FILE = "psydt_source.json"  # left in a model folder this module downloaded: {"hub", "repo"}


# -- checking what is there --------------------------------------------------------------------------
def safetensors_complete(path: Path) -> bool:
    """True when a .safetensors file is as long as its own header says (catches truncated downloads)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len <= 0 or 8 + header_len > size:
                return False
            header = json.loads(f.read(header_len))
    except (OSError, struct.error, ValueError):
        return False
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return size >= 8 + header_len + end


def tokenizer_present(folder) -> bool:
    folder = Path(folder)
    files = (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )
    return files and (folder / "tokenizer_config.json").is_file()


def model_problems(folder) -> list[str]:
    """What is missing for `folder` to be a loadable model (empty list = usable)."""
    folder = Path(folder)
    if not folder.is_dir():
        return ["文件夹不存在"]
    problems = []
    if not (folder / "config.json").is_file():
        problems.append("缺少 config.json")
    if not tokenizer_present(folder):
        problems.append("缺少分词器文件（tokenizer_config.json 和 tokenizer.json 或 vocab.json + merges.txt）")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text("utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, OSError):
            return problems + ["model.safetensors.index.json 损坏"]
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        pickles = [p.name for p in folder.glob("*.bin")]
        hint = f"（只有不安全的 pickle 权重 {pickles[0]}，本工具只加载 safetensors）" if pickles else ""
        return problems + [f"缺少 safetensors 权重{hint}"]
    for shard in shards:
        if not safetensors_complete(folder / shard):
            problems.append(f"权重文件 {shard} 缺失或不完整")
    return problems


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_file_problem(path: Path) -> str | None:
    """None when the file is usable; otherwise why it must be fetched again."""
    if not path.is_file():
        return "文件不存在"
    known = KNOWN_FILES.get(path.name)
    if known and path.stat().st_size == known[0] and sha256_file(path) == known[1]:
        return None
    # Not the known version: accept any complete JSON/JSON Lines file (the user may have edited
    # it, or upstream may have updated it); a truncated download does not parse.
    try:
        load_records(path)
    except PsyDTError:
        size = path.stat().st_size
        expected = f"，应为 {known[0]:,} 字节" if known else ""
        return f"文件不完整或已损坏（{size:,} 字节{expected}）"
    return None


# -- downloading ---------------------------------------------------------------------------------
def _manual_hint(hub: str, repo: str, target, what: str) -> str:
    return (
        f"请检查网络，或在能上网的机器上从 {HUB_SITES[hub]} 下载 {repo} 的{what}，"
        f"手动放到 {target}（也可以用 --hub {'huggingface' if hub == 'modelscope' else 'modelscope'} 换一个来源）。"
    )


def shown(path) -> str:
    """A folder as the user would type it: ./Qwen/Qwen3-1.7B rather than Qwen/Qwen3-1.7B (which reads as a repo id)."""
    path = Path(path)
    return str(path) if path.is_absolute() else f"./{path}"


@contextlib.contextmanager
def quiet_hub_logs():
    """The hubs' English retry warnings would come before our Chinese message; failures are reported by us.
    modelscope_hub sets its logger's level when first used (inside the download): it is made to do that now."""
    with contextlib.suppress(Exception):  # an optional client's private helper: best effort
        from modelscope_hub.utils.logger import get_logger

        get_logger()
    loggers = [logging.getLogger(n) for n in ("modelscope", "modelscope_hub", "urllib3", "huggingface_hub", "filelock")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def failing_download(folder: Path, what: str, hint: str):
    """Any network / hub failure inside stops with what to do by hand; folders the download made are removed."""
    made = created_folders(folder)
    try:
        yield
    except PsyDTError:
        remove_if_empty(made)
        raise
    except Exception as err:
        remove_if_empty(made)
        raise PsyDTError(f"{what}：{type(err).__name__}: {err}。" + hint) from None


def created_folders(folder) -> list[Path]:
    """`folder` and those of its parents that do not exist yet (outermost last)."""
    folder, made = Path(folder).absolute(), []
    while not folder.exists():
        made.append(folder)
        folder = folder.parent
    return made


def remove_if_empty(folders) -> None:
    """After a failed download, remove the folders it created if no file landed in them (a partly
    downloaded model is kept: the hub resumes it next time)."""
    for folder in folders:
        if folder.is_dir() and not any(p.is_file() and p.stat().st_size > 0 for p in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)


def ensure_model(repo: str, local_dir, hub: str = "modelscope") -> Path:
    """Make sure `local_dir` holds a usable model; download `repo` into exactly that folder if not."""
    local_dir = Path(local_dir)
    problems = model_problems(local_dir)
    if not problems:
        return local_dir
    print(f"[下载] 模型文件夹 {shown(local_dir)} 不可用（{'；'.join(problems)}），"
          f"从 {hub} 下载模型 {repo} 到本地文件夹 {shown(local_dir)} ...", flush=True)
    hint = _manual_hint(hub, repo, shown(local_dir), "全部文件（config.json、*.safetensors、分词器文件）")
    print(connecting_line(hub, "--model_local_dir 指向已经下载好的模型文件夹"), flush=True)
    with failing_download(local_dir, f"从 {hub} 下载模型 {repo} 到本地文件夹 {shown(local_dir)} 失败", hint):
        with quiet_hub_logs():
            _downloader(hub, 0)(repo, local_dir)
    problems = model_problems(local_dir)
    if problems:
        raise PsyDTError(
            f"下载后模型文件夹 {shown(local_dir)} 仍不可用：{'；'.join(problems)}。"
            + _manual_hint(hub, repo, shown(local_dir), "全部文件")
        )
    atomic_write_json(local_dir / SOURCE_FILE, {"hub": hub, "repo": repo})
    return local_dir


def model_source(folder) -> dict | None:
    """{"hub", "repo"} of a model folder `ensure_model` downloaded; None for one put there by other means
    (its hub id, if it has one, is not known here)."""
    try:
        source = json.loads((Path(folder) / SOURCE_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return source if isinstance(source, dict) and isinstance(source.get("repo"), str) else None


def connecting_line(hub: str, local: str) -> str:
    """Said before a download starts: offline, modelscope's client is silent for ~20 s before it gives up
    (huggingface_hub stops at once under HF_HUB_OFFLINE=1)."""
    if hub == "huggingface" and hub_offline():
        return f"[下载] 已设置 HF_HUB_OFFLINE：huggingface_hub 不联网，只找本地文件（没有就立即报错）。离线时请用 {local}。"
    skip = "" if hub == "huggingface" else "；用 --hub huggingface 时设置 HF_HUB_OFFLINE=1 会立即停止"
    return (f"[下载] 正在连接 {hub}（{hub_endpoint(hub)}）；没有网络时要重试约 20 秒才会报错。"
            f"不想等可以按 Ctrl-C，改用 {local}{skip}。")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _modelscope_model(repo: str, local_dir: Path) -> None:
    from modelscope import snapshot_download

    snapshot_download(model_id=repo, local_dir=str(local_dir), ignore_patterns=list(PICKLE_WEIGHTS))


def _huggingface_model(repo: str, local_dir: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo, local_dir=str(local_dir), ignore_patterns=list(PICKLE_WEIGHTS))


def _modelscope_file(repo: str, filename: str, folder: Path) -> str:
    from modelscope.hub.file_download import dataset_file_download

    return dataset_file_download(dataset_id=repo, file_path=filename, local_dir=str(folder))


def _huggingface_file(repo: str, filename: str, folder: Path) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset", local_dir=str(folder))


# hub -> (download a whole model into a folder, download one dataset file into a folder)
DOWNLOADERS = {"modelscope": (_modelscope_model, _modelscope_file),
               "huggingface": (_huggingface_model, _huggingface_file)}
assert tuple(DOWNLOADERS) == HUBS


def _downloader(hub: str, kind: int):
    if hub not in DOWNLOADERS:
        raise PsyDTError(f"未知的 --hub {hub!r}，可选：{', '.join(HUBS)}")
    return DOWNLOADERS[hub][kind]


def ensure_dataset_file(repo: str, dataset_dir, filename: str, hub: str = "modelscope") -> Path:
    """Make sure `dataset_dir/filename` is a complete file; download just that file if not.
    A bad existing file is kept beside as `<name>.bad` rather than overwritten."""
    dataset_dir = Path(dataset_dir)
    target = dataset_dir / filename
    problem = dataset_file_problem(target)
    if problem is None:
        return target
    print(f"[下载] 数据文件 {shown(target)}：{problem}，从 {hub} 下载 {repo}/{filename} ...", flush=True)
    print(connecting_line(hub, "--dataset_dir / --train_file 指向已经下载好的文件"), flush=True)
    made = created_folders(dataset_dir)
    tmp = temp_dir_beside(target)
    try:
        with quiet_hub_logs():
            got = Path(_downloader(hub, 1)(repo, filename, tmp))
        if not got.is_file():
            got = tmp / filename
        new_problem = dataset_file_problem(got)
        if new_problem is not None:
            raise PsyDTError(
                f"从 {hub} 下载的 {repo}/{filename} {new_problem}。" + _manual_hint(hub, repo, shown(target), filename)
            )
        if target.exists():
            os.replace(target, target.with_name(target.name + ".bad"))
        os.replace(got, target)
    except PsyDTError:
        raise
    except Exception as err:
        raise PsyDTError(
            f"从 {hub} 下载数据集 {repo} 的文件 {filename} 到本地文件夹 {shown(dataset_dir)} 失败：{type(err).__name__}: {err}。"
            + _manual_hint(hub, repo, shown(target), f"文件 {filename}")
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_if_empty(made)
    return target


# -- whole datasets by id ----------------------------------------------------------------------------------
HUB_DATASET_MARK = ".psydt_complete"  # written last: a folder without it is an interrupted download


def _modelscope_dataset(repo: str, folder: Path, patterns) -> None:
    from modelscope.hub.snapshot_download import dataset_snapshot_download

    dataset_snapshot_download(dataset_id=repo, local_dir=str(folder), allow_patterns=patterns)


def _huggingface_dataset(repo: str, folder: Path, patterns) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo, repo_type="dataset", local_dir=str(folder), allow_patterns=patterns)


DATASET_DOWNLOADERS = {"modelscope": _modelscope_dataset, "huggingface": _huggingface_dataset}
DATA_PATTERNS = ["*.json", "*.jsonl", "*.parquet", "*.csv", "*.arrow", "*.txt", "**/*.json", "**/*.jsonl",
                 "**/*.parquet", "**/*.csv", "**/*.arrow", "**/*.txt"]


def hub_dataset_dir(repo: str, hub: str) -> Path:
    return user_cache_dir("datasets", hub, *repo.split("/"))


def ensure_hub_dataset(repo: str, hub: str = "modelscope", filename: str | None = None) -> Path:
    """The local copy of dataset `repo` (its data files, or just `filename`) in the per-user cache, downloaded
    once; later runs use the copy without touching the network. Returns the file, or the folder."""
    if hub not in DATASET_DOWNLOADERS:
        raise PsyDTError(f"未知的 hub {hub!r}，可选：{', '.join(HUBS)}")
    folder = hub_dataset_dir(repo, hub) / (filename.replace("/", "__") if filename else "_all")
    target = folder / filename if filename else folder
    if (folder / HUB_DATASET_MARK).is_file():
        return target
    print(f"[下载] 从 {hub} 下载数据集 {repo}{'/' + filename if filename else ''} 到 {folder} ...", flush=True)

    def fill(tmp):
        with quiet_hub_logs():
            DATASET_DOWNLOADERS[hub](repo, tmp, [filename] if filename else DATA_PATTERNS)
        if filename and not (tmp / filename).is_file():
            raise PsyDTError(f"{hub} 上的数据集 {repo} 里没有文件 {filename}。")
        (tmp / HUB_DATASET_MARK).write_text(repo, "utf-8")

    hint = (f"请检查网络，或在能上网的机器上从 {HUB_SITES[hub]} 下载它的数据文件，用 --train_file 指向本地文件或文件夹"
            "（也可以换一个 --hub）。")
    print(connecting_line(hub, "--train_file 指向已经下载好的本地文件或文件夹"), flush=True)
    with failing_download(folder, f"从 {hub} 下载数据集 {repo} 失败", hint):
        write_dir(folder, fill)
    return target


# -- is the hub there? -----------------------------------------------------------------------------
def hub_endpoint(hub: str) -> str:
    """The address the hub's own client will use: HF_ENDPOINT for Hugging Face (a mirror, e.g. hf-mirror.com);
    for ModelScope MODELSCOPE_ENDPOINT, else the older MODELSCOPE_DOMAIN (a bare host gets https://), as
    modelscope_hub's config reads them."""
    if hub == "huggingface":
        return os.environ.get("HF_ENDPOINT", "").strip() or HUB_SITES[hub]
    url = os.environ.get("MODELSCOPE_ENDPOINT", "").strip() or os.environ.get("MODELSCOPE_DOMAIN", "").strip()
    if not url:
        return HUB_SITES[hub]
    return url if url.startswith(("http://", "https://")) else f"https://{url}"


def hub_unreachable(hub: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached, or None when it (or the proxy in front of it) answers a TCP connection
    within `timeout` (one try). Offline, modelscope's own client retries for ~25 s before it gives up; this
    costs at most `timeout` and never raises: every failure is a reason in words."""
    if hub == "huggingface" and hub_offline():
        return "已设置 HF_HUB_OFFLINE"
    url = urlparse(hub_endpoint(hub))
    if not url.hostname:
        return f"地址 {hub_endpoint(hub)} 无法解析出主机名"
    proxy = _proxy_for(url)
    host, port = (proxy.hostname, proxy.port or 80) if proxy else (url.hostname, url.port or _PORTS.get(url.scheme, 443))
    what = f"代理 {host}:{port}" if proxy else (host if (url.port is None) else f"{host}:{port}")
    try:
        socket.create_connection(resolve(host, port, timeout), timeout=timeout).close()
    except Exception as err:  # noqa: BLE001 -- a probe's every failure is an answer, never a traceback
        return f"连不上 {what}（{type(err).__name__}）"
    return None


_PORTS = {"http": 80, "https": 443}


def _proxy_for(url):
    """The proxy the hub's HTTP client would go through for `url` (HTTPS_PROXY, ALL_PROXY, ..., NO_PROXY honoured)."""
    proxies = urllib.request.getproxies_environment()
    chosen = proxies.get(url.scheme) or proxies.get("all")
    if not chosen or urllib.request.proxy_bypass_environment(url.hostname, proxies):
        return None
    parsed = urlparse(chosen if "://" in chosen else f"http://{chosen}")
    return parsed if parsed.hostname else None


def resolve(host: str, port: int, timeout: float) -> tuple:
    """(ip, port) for `host` within `timeout`: getaddrinfo has no timeout of its own, and a resolver that never
    answers would hold the start for its own retries. The lookup runs in a daemon thread (left behind if late)
    that keeps whatever it raises, so nothing is printed from the thread; the caller gets it as an OSError."""
    found, failed = [], []

    def lookup():
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as err:  # noqa: BLE001 -- kept for the caller, not printed by the thread
            failed.append(err)

    thread = threading.Thread(target=lookup, daemon=True, name="psydt-hub-probe")
    thread.start()
    thread.join(timeout)
    if found and found[0]:
        return found[0][0][4][:2]
    if thread.is_alive():
        raise socket.timeout(f"resolving {host}")
    err = failed[0] if failed else None
    raise err if isinstance(err, OSError) else socket.gaierror(f"resolving {host}: {type(err).__name__}")
