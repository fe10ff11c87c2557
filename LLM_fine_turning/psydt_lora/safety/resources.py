"""Help resources: who to call, read from `data/resources_zh.json` or the user's `--safety_resources FILE`,
and every text built from them -- the crisis notice the user sees (the imminent-risk one too), the safe
reply, and the guidance the model is given on a crisis turn -- so the model recommends the lines the user
is shown, whichever file they came from. The entry marked `"emergency": true` (120 in the built-in list) is
the one the imminent-risk notice tells the user to call now."""
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.files import read_json
from psydt_lora.safety.rules import DATA

DEFAULT_RESOURCES = DATA / "resources_zh.json"
# Added to the system prompt for the turn in which a crisis signal was detected. The system prompt is
# the slot the model was trained to follow; the user's own words stay untouched and nothing is shown.
GUIDANCE = (
    "【安全提示】来访者刚才的话里可能包含危机信号（{categories}）。请把来访者的安全放在第一位："
    "温和、直接地表达关心，认真倾听，询问其现在是否安全、是否有伤害自己或他人的具体打算；"
    "鼓励其立即联系专业帮助（{contacts}）或身边信任的人；不要评判，不要提供任何伤害自己或他人的方法或细节。"
)
GUIDANCE_IMMINENT = ("来访者可能正在实施或刚刚实施（例如已经服药、受伤）：请明确请其现在就拨打 {emergency} "
                     "或马上去最近的医院急诊，并请身边的人陪着。")
CHECK_IN = ("【温和确认】来访者提到过去有过轻生或自伤的念头或经历，并说现在已经好转。请肯定其走过来的努力，"
            "再温和地问一句：现在是否安全，那样的念头最近有没有再出现；如果有，可以随时联系 {contacts}。不要说教，不要追问细节。")
IMMINENT = ("如果你已经服了药、受了伤，或者正在伤害自己：请现在就拨打 {emergency}，或者马上去最近的医院急诊；"
            "不要一个人待着，让身边的人陪着你。")


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
        if not isinstance(item.get("emergency", False), bool):
            raise PsyDTError(f"求助资源文件 {source} 的 resources[{i}] 的 \"emergency\" 只能是 true 或 false。")
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


def emergency(data: dict) -> str:
    """The line to call now when a life is in danger: the entries marked `"emergency": true`, as "name contact"
    (the built-in list: 急救 120); a file that marks none: the local emergency number, in words."""
    marked = [f"{r['name']} {r['contact']}" for r in data["resources"] if r.get("emergency")]
    return "、".join(marked) if marked else "当地的急救电话"


def notice(data: dict, level: str | None) -> str:
    """Shown before the reply on a crisis turn. Imminent risk (an overdose or an attempt in progress, a plan
    for now): call the emergency line or go to the emergency room now, then the resources. The first line is
    the heading (the page shows its own in its place)."""
    if level == "imminent":
        return f"【紧急】你的安全现在最要紧。\n{IMMINENT.format(emergency=emergency(data))}\n{format_resources(data)}"
    return f"【关心】你现在的感受很重要。\n{format_resources(data)}"


def contacts(data: dict) -> str:
    """Every resource as "name contact", in the file's order."""
    return "、".join(f"{r['name']} {r['contact']}" for r in data["resources"])


def safe_reply(data: dict) -> str:
    """What stands in for a screened reply."""
    return f"我很在意你的安全。现在请先联系能够及时帮助你的人：{contacts(data)}。我也会继续在这里听你说。"


def check_in_guidance(data: dict) -> str:
    """The model's instruction when a crisis is told as resolved: lowered to a gentle check-in, never silence."""
    return CHECK_IN.format(contacts=contacts(data))


def guidance(data: dict, categories: str, level: str | None = None) -> str:
    """The model's instruction for a crisis turn: the same lines the user is shown (and, at imminent risk, the
    same emergency line)."""
    text = GUIDANCE.format(categories=categories, contacts=contacts(data))
    return text + GUIDANCE_IMMINENT.format(emergency=emergency(data)) if level == "imminent" else text
