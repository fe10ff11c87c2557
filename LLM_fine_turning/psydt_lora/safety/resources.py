"""Help resources: who to call, read from `data/resources_zh.json` or the user's `--safety_resources FILE`,
and the texts built from them (the crisis notice, the screened-reply notice, the safe reply)."""
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.files import read_json
from psydt_lora.safety.rules import DATA

DEFAULT_RESOURCES = DATA / "resources_zh.json"


def load_resources(path=None) -> tuple[dict, str]:
    """The help resources (JSON: name, intro, resources[{name, contact, note}], outro) and where they came from."""
    source = Path(path) if path else DEFAULT_RESOURCES
    data = read_json(source, "求助资源文件")
    items = data.get("resources") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise PsyDTError(f"求助资源文件 {source} 需要一个非空的 \"resources\" 列表。")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("contact"), str):
            raise PsyDTError(f"求助资源文件 {source} 的 resources[{i}] 需要字符串字段 \"name\" 和 \"contact\"。")
    label = "内置默认（中国大陆）" if path is None else str(source)
    return data, label


def format_resources(data: dict) -> str:
    lines = [data.get("intro") or "你可以随时寻求帮助："]
    for item in data["resources"]:
        note = f"（{item['note']}）" if item.get("note") else ""
        lines.append(f"  · {item['name']}：{item['contact']}{note}")
    if data.get("outro"):
        lines.append(data["outro"])
    return "\n".join(lines)


def notice(data: dict, level: str | None) -> str:
    """Shown before the reply on a crisis turn."""
    head = "【紧急】" if level == "imminent" else "【关心】"
    return f"{head}你现在的感受很重要。\n{format_resources(data)}"


def screened_message(data: dict) -> str:
    return "[这条回复可能包含不安全的内容，已被安全过滤，没有显示。]\n" + format_resources(data)


def safe_reply(data: dict) -> str:
    """What stands in for a screened reply."""
    return "我很在意你的安全。现在请先联系能够及时帮助你的人：" + "、".join(
        f"{r['name']} {r['contact']}" for r in data["resources"]) + "。我也会继续在这里听你说。"
