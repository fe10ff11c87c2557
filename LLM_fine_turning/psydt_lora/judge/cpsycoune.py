"""CPsyCounE (Zhang et al., Findings of ACL 2024; CC BY 4.0): 45 counselling dialogues, 9 topics x 5, as
turn-based test items -- for every client turn the model answers given the dialogue's real history up to
that turn, the real supporter's reply being the reference.

Read from a local folder laid out as published (<topic>/<n>.json, each a JSON list of strings
"求助者：..." / "支持者：..."), or fetched once from the public repository into a local cache folder.
"""
import json
import urllib.parse
import urllib.request
from pathlib import Path

from psydt_lora.data.dialogues import Dialogue
from psydt_lora.data.formats import read_source
from psydt_lora.errors import PsyDTError
from psydt_lora.files import atomic_write_bytes


TOPICS = ("Career", "Education", "Emotion&Stress", "Family Relationship", "Love&Marriage", "Mental Disease",
          "Self-growth", "Sex", "Social Relationship")
CASES = 5
SOURCE = "https://raw.githubusercontent.com/CAS-SIAT-XinHai/CPsyCoun/main/CPsyCounE/"


def _download(url: str) -> bytes:
    """The network boundary (tests replace it)."""
    with urllib.request.urlopen(url, timeout=60) as res:
        return res.read()


def fetch(cache_dir) -> Path:
    """The 45 files into `cache_dir` (files already there are kept: an interrupted fetch resumes)."""
    cache_dir = Path(cache_dir)
    todo = [(t, n) for t in TOPICS for n in range(1, CASES + 1) if not (cache_dir / t / f"{n}.json").is_file()]
    if todo:
        print(f"[CPsyCounE] 从 {SOURCE} 下载 {len(todo)} 个文件到 {cache_dir}（CC BY 4.0）", flush=True)
    for topic, n in todo:
        url = SOURCE + urllib.parse.quote(f"{topic}/{n}.json")
        try:
            raw = _download(url)
            json.loads(raw.decode("utf-8-sig"))
        except (OSError, ValueError) as err:
            raise PsyDTError(f"下载 CPsyCounE 文件 {url} 失败（{err}）。没有网络时请用 --cpsycoune_dir 指向本地文件夹。") from None
        atomic_write_bytes(cache_dir / topic / f"{n}.json", raw)
    return cache_dir


def load_dialogues(folder) -> dict[str, list[dict]]:
    """{"<topic>/<n>": messages} for every <topic>/<n>.json under `folder`, read by the project's one
    CPsyCounE reader (data.formats), which names the file and the sentence of anything malformed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PsyDTError(f"CPsyCounE 文件夹 {folder} 不存在。")
    source = read_source(folder, "cpsycoune")
    return {str(Path(d.id).with_suffix("").as_posix()): d.messages for d in source.dialogues}


def turn_items(dialogues: dict, system: str | None = None) -> list[Dialogue]:
    """One item per client turn that the supporter answered: the real history up to it, and the
    supporter's reply as the reference (last message)."""
    head = [{"role": "system", "content": system}] if system else []
    items = []
    for name, messages in dialogues.items():
        for i, m in enumerate(messages):
            if m["role"] == "assistant" and i > 0 and messages[i - 1]["role"] == "user":
                items.append(Dialogue(len(items), name, name.split("/")[0], head + messages[:i + 1]))
    return items
