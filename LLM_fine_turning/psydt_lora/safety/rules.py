"""Counselling safety: crisis-language detection, help resources, steering and reply screening.

The rules live in `data/lexicon.json` and the default help resources in
`data/resources_zh.json` (replace with `--safety_resources FILE`). Nothing here logs or uploads
text: detections are kept in memory for the session (and in the local output files).
"""
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.files import read_json

DATA = Path(__file__).resolve().parent / "data"
LEXICON = DATA / "lexicon.json"
DEFAULT_RESOURCES = DATA / "resources_zh.json"
LEVELS = ("concern", "imminent")
_CJK_GAP = re.compile(r"(?<=[\u3400-\u9fff])\s+(?=[\u3400-\u9fff])")

# Added to the system prompt for the turn in which a crisis signal was detected. The system prompt is
# the slot the model was trained to follow; the user's own words stay untouched and nothing is shown.
GUIDANCE = (
    "【安全提示】来访者刚才的话里可能包含危机信号（{categories}）。请把来访者的安全放在第一位："
    "温和、直接地表达关心，认真倾听，询问其现在是否安全、是否有伤害自己或他人的具体打算；"
    "鼓励其立即联系专业帮助（全国心理援助热线 12356、希望24热线 400-161-9995，紧急情况拨打 110 或 120）"
    "或身边信任的人；不要评判，不要提供任何伤害自己或他人的方法或细节。"
)
CATEGORY_NAMES = {"suicide": "自杀风险", "self_harm": "自伤", "harm_others": "伤害他人", "abuse": "正在遭受暴力或虐待"}


@dataclass
class Detection:
    crisis: bool = False
    categories: list = field(default_factory=list)
    level: str | None = None  # "concern" or "imminent"
    matches: list = field(default_factory=list)  # (category, level, matched text) -- kept local only
    layers: dict = field(default_factory=dict)  # what each layer said: {"lexicon": {...}, "qwen3guard": {...}}

    def as_dict(self) -> dict:
        return {"crisis": self.crisis, "categories": self.categories, "level": self.level, "layers": self.layers}


@dataclass
class _Rule:
    id: str
    category: str
    level: str
    kind: str  # strong, mention, violence_word (see lexicon.json "policy")
    regex: re.Pattern


@dataclass
class _Policy:
    id: str
    when: list
    unless: list
    kinds: list
    levels: list
    categories: list

    def drops(self, kind: str, level: str, category: str) -> bool:
        return (kind in self.kinds and (not self.levels or level in self.levels)
                and (not self.categories or category in self.categories))


@lru_cache(maxsize=4)
def load_rules(path=LEXICON, without_benign: tuple = ()):
    """The compiled lexicon; `without_benign` leaves those benign_rules ids out (tests prove each is needed)."""
    data = json.loads(Path(path).read_text("utf-8"))
    benign = [p for r in data.get("benign_rules", {}).get("rules", []) if r["id"] not in without_benign
              for p in r["patterns"]] + data["benign"]
    rules = [_Rule(r["id"], r["category"], r["level"], r["kind"], re.compile("|".join(f"(?:{p})" for p in r["patterns"])))
             for r in data["rules"] + data.get("kinds", {}).get("rules", [])]
    policy = [_Policy(p["id"], p["when"], p["unless"], p["kinds"], p.get("levels", []), p.get("categories", []))
              for p in data["policy"]["rules"]]
    combos = [(c["category"], c["level"], re.compile(c["anchor"]), re.compile(c["with"])) for c in data["combos"]["rules"]]
    return {
        "benign": re.compile("|".join(f"(?:{p})" for p in benign)),
        "negation": re.compile(data["negation"]),
        "not_negation": re.compile(data["negation_exceptions"]),
        "negation_en": re.compile(data["negation_en"]),
        "context": {k: re.compile(v) for k, v in data["weak_context"].items()},
        "policy": policy,
        "rules": rules,
        "combos": combos,
        "harmful": re.compile("|".join(f"(?:{p})" for p in data["harmful_reply"]["patterns"] + [
            q for rule in data["harmful_reply"].get("rules", []) for q in rule["patterns"]])),
    }


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return _CJK_GAP.sub("", text)


def _blank(match) -> str:
    return "□" * len(match.group(0))


def _negated(text: str, start: int, rules) -> bool:
    """A negation closes the clause right before the match ("不会", "从来没想过" ...); phrases like
    "忍不住" / "控制不住" contain 不 but are not negations."""
    before = rules["not_negation"].sub(_blank, text[:start])
    return bool(rules["negation"].search(before) or rules["negation_en"].search(before))


def detect(text: str, rules=None) -> Detection:
    """Crisis signals in one user turn: rule hits, minus those a negation or an active policy entry drops."""
    r = rules or load_rules()
    t = r["benign"].sub(_blank, normalize(text))
    present = {name for name, rx in r["context"].items() if rx.search(t)}
    active = [p for p in r["policy"] if all(w in present for w in p.when) and not any(u in present for u in p.unless)]

    def dropped(kind, level, category):
        return any(p.drops(kind, level, category) for p in active)

    found = Detection()
    for rule in r["rules"]:
        if dropped(rule.kind, rule.level, rule.category):
            continue
        found.matches += [(rule.category, rule.level, m.group(0)) for m in rule.regex.finditer(t)
                          if not _negated(t, m.start(), r)]
    for category, level, anchor, partner in r["combos"]:
        if dropped("combo", level, category):
            continue
        hits = [m for m in anchor.finditer(t) if not _negated(t, m.start(), r)]
        if hits and partner.search(t.replace(hits[0].group(0), "□" * len(hits[0].group(0)), 1) if len(hits) == 1 else t):
            found.matches.append((category, level, hits[0].group(0)))
    if found.matches:
        found.crisis = True
        found.categories = sorted({c for c, _, _ in found.matches})
        found.level = "imminent" if any(level == "imminent" for _, level, _ in found.matches) else "concern"
    return found


def harmful_reply(text: str, rules=None) -> bool:
    """A reply that gives means/methods of self-harm or suicide, or encourages it."""
    r = rules or load_rules()
    t = normalize(text)
    return any(not _negated(t, m.start(), r) for m in r["harmful"].finditer(t))


# -- help resources ------------------------------------------------------------------------------------
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


class ReplyScreen:
    """Screens a streamed reply. Text is released `holdback` characters behind the stream so a harmful
    phrase is caught before it is shown; in `hold` mode nothing is shown until the reply is complete."""

    def __init__(self, hold: bool, holdback: int = 16, judge=None):
        self.hold = hold
        self.holdback = holdback
        self.judge = judge or harmful_reply  # the whole reply's check (the guard too, when there is one)
        self.text = ""
        self.shown = 0
        self.blocked = False

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.blocked or harmful_reply(self.text):
            self.blocked = True
            return ""
        if self.hold:
            return ""
        upto = max(self.shown, len(self.text) - self.holdback)
        out, self.shown = self.text[self.shown:upto], upto
        return out

    def finish(self, reply: str) -> tuple[str, bool]:
        """(the rest to show, whether the reply was blocked)."""
        if self.blocked or self.judge(reply):
            self.blocked = True
            return "", True
        rest = self.text[self.shown:]
        self.shown = len(self.text)
        return rest, False


class Safety:
    """What both inference modes use: notice + steering for crisis turns, screening for replies."""

    def __init__(self, resources_path=None, guard=None):
        self.resources, self.source = load_resources(resources_path)
        self.guard = guard  # guard.Guard or None: the second layer beside the lexicon
        self.events = []

    def guard_cost(self) -> str:
        g = self.guard
        return f"审核模型 {g.name}：{g.calls} 次，平均 {g.ms_per_call():.0f} ms/次，格式不符 {g.malformed} 次"

    def layers(self) -> str:
        return "词典" + (f" + {self.guard.label}" if self.guard is not None else "")

    def record(self, kind: str, detection: Detection | None = None):
        event = {"time": datetime.now().isoformat(timespec="seconds"), "event": kind}
        if detection is not None:
            event.update(detection.as_dict())
        self.events.append(event)

    def check(self, user_text: str) -> Detection:
        return self.check_turn([{"role": "user", "content": user_text}])

    def check_turn(self, messages) -> Detection:
        """The last user turn: the lexicon on its words, the guard (if any) on it with recent history.
        A crisis when either layer says so; `layers` keeps what each said."""
        found = detect(messages[-1]["content"])
        found.layers = {"lexicon": {"crisis": found.crisis, "categories": list(found.categories), "level": found.level}}
        if self.guard is None:
            return found
        verdict = self.guard.check_user(messages)
        if verdict is None:
            found.layers[self.guard.name] = {"error": "malformed verdict"}
            return found
        cats = verdict.crisis_categories
        found.layers[self.guard.name] = {"crisis": bool(cats), "categories": cats, "label": verdict.label}
        if cats:
            found.crisis = True
            found.categories = sorted(set(found.categories) | set(cats))
            found.level = found.level or "concern"
        return found

    def reply_layers(self, user_text: str, reply: str) -> dict:
        """Which layers find the reply harmful: the guard first, the lexicon second."""
        out = {}
        if self.guard is not None:
            verdict = self.guard.check_reply(user_text, reply)
            out[self.guard.name] = None if verdict is None else verdict.unsafe
        out["lexicon"] = harmful_reply(reply)
        return out

    def screen(self, hold: bool, user_text: str) -> ReplyScreen:
        return ReplyScreen(hold=hold, judge=lambda reply: any(self.reply_layers(user_text, reply).values()))

    def notice(self, detection: Detection) -> str:
        head = "【紧急】" if detection.level == "imminent" else "【关心】"
        return f"{head}你现在的感受很重要。\n{format_resources(self.resources)}"

    def guidance(self, detection: Detection) -> str:
        names = "、".join(CATEGORY_NAMES.get(c, c) for c in detection.categories)
        return GUIDANCE.format(categories=names)

    @staticmethod
    def with_guidance(messages, guidance: str) -> list[dict]:
        msgs = [dict(m) for m in messages]
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = msgs[0]["content"] + "\n\n" + guidance
        else:
            msgs.insert(0, {"role": "system", "content": guidance})
        return msgs

    def screened_message(self) -> str:
        return "[这条回复可能包含不安全的内容，已被安全过滤，没有显示。]\n" + format_resources(self.resources)

    def safe_reply(self) -> str:
        return "我很在意你的安全。现在请先联系能够及时帮助你的人：" + "、".join(
            f"{r['name']} {r['contact']}" for r in self.resources["resources"]) + "。我也会继续在这里听你说。"

    # -- test mode -----------------------------------------------------------------------------------
    def screened(self, user_text: str, response: str) -> dict:
        """Screening fields of a batch-test reply. The model's raw reply stays the scored response; what a
        user would have been shown instead is kept beside it as `screened_response`."""
        if not any(self.reply_layers(user_text, response).values()):
            return {"screened": False}
        return {"screened": True, "screened_response": self.safe_reply()}

    def summary(self, results) -> dict:
        crisis = [r for r in results if r.get("safety", {}).get("crisis")]
        by_cat = {}
        for r in crisis:
            for c in r["safety"]["categories"]:
                by_cat[c] = by_cat.get(c, 0) + 1
        return {
            "crisis_items": len(crisis),
            "imminent_items": sum(1 for r in crisis if r["safety"]["level"] == "imminent"),
            "by_category": by_cat,
            "screened_responses": sum(1 for r in results if r.get("screened")),
            **({"guard": {"name": self.guard.name, "calls": self.guard.calls, "ms_per_call": round(self.guard.ms_per_call(), 1),
                          "malformed": self.guard.malformed}} if self.guard is not None else {}),
        }
