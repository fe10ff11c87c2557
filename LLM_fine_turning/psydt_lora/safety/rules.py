"""The lexicon: crisis language in a user's turn, harmful content in a reply, by rules kept as data.

The rules, their examples and the policy that drops hits live in `data/lexicon.json`. Nothing here logs
or uploads text.
"""
import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
LEXICON = DATA / "lexicon.json"
_CJK_GAP = re.compile(r"(?<=[\u3400-\u9fff])\s+(?=[\u3400-\u9fff])")

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
