"""Measuring the safety layers: recall and false alarms of each layer, and of any of them, on lists of texts.

`--safety_eval FILE` reads one of three shapes:
  * this project's lists: `{"positive", "negative", "harmful_replies", "safe_replies"}` (any subset); an item is a
    string or an object `{"text", "kind"?, "context"? | "messages"?}`: `context` is the counsellor's turn before the
    text, `messages` the turns before it; figures are given per list and, where items have kinds, per kind;
  * SOS-HL-1K (`[{"text", "risk": "high" | "low"}]`, Weibo posts): of its training split, only the part held
    back from rule development (the frozen split in `data/sos_hl_split.json`) is measured; its validation and
    test splits (no post of them in the frozen split) are measured whole; "high" posts must fire, "low"
    posts are reported as a firing rate, never as false alarms ("low" risk is not "no crisis");
  * PsySUICIDE (`[{"text", "labels": [...]}]`): every class but "unrelated" must fire, "unrelated" must not.
Posts are read from the user's copy and never stored; the split file holds hashes only.
"""
import hashlib
import json
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.files import read_json
from psydt_lora.safety.rules import DATA, detect, harmful_reply

EVAL_LISTS = {  # list -> (what a hit means, the check that runs on it)
    "positive": ("recall", "user"), "negative": ("false_alarm_rate", "user"),
    "harmful_replies": ("recall", "reply"), "safe_replies": ("false_alarm_rate", "reply"),
    "low_risk": ("fired_rate", "user"),
}
LIST_NAMES = {"positive": "危机（应检出）", "negative": "非危机（不应检出）", "harmful_replies": "有害回复（应拦截）",
              "safe_replies": "安全回复（不应拦截）", "low_risk": "低风险帖子（触发率，不算误报）"}
MEASURE_NAMES = {"recall": "召回率", "false_alarm_rate": "误报率", "fired_rate": "触发率"}
SOS_SPLIT = DATA / "sos_hl_split.json"
UNRELATED = "与自杀/自伤/攻击行为无关"  # PsySUICIDE's "none of these" class


ROLES = ("system", "user", "assistant")


class Case(str):
    """One text to check, with its kind and the turns before it; a str, so a check of a plain text takes it."""

    def __new__(cls, text: str, kind: str | None = None, messages=()):
        case = super().__new__(cls, text)
        case.kind, case.messages = kind, list(messages)
        return case

    def asked(self) -> str | None:
        """The counsellor's turn right before the text, if the turn before it is one."""
        before = getattr(self, "messages", None)
        return before[-1]["content"] if before and before[-1]["role"] == "assistant" else None


def post_hash(text: str) -> str:
    """A post's name in the split file: the first 12 hex digits of the sha256 of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def sos_part(text: str) -> str:
    """How the split was drawn (once, before any rule change): the parity of the hash's first byte."""
    return "heldout" if int(post_hash(text)[:2], 16) % 2 else "dev"


def sos_heldout() -> set:
    return set(json.loads(SOS_SPLIT.read_text("utf-8"))["heldout"])


def sos_cases(posts: list, part: str = "heldout") -> dict:
    """SOS-HL-1K posts of one part as evaluation lists: high -> positive, low -> low_risk. A file with no post
    of the held-back part is another split of SOS-HL-1K, none of it seen while the rules were made: all of it."""
    held = sos_heldout()
    hashes = [post_hash(p["text"]) for p in posts]
    if part == "heldout" and not held.intersection(hashes):
        mine = posts
    else:
        mine = [p for p, h in zip(posts, hashes) if (h in held) == (part == "heldout")]
    return {"positive": [p["text"] for p in mine if p["risk"] == "high"],
            "low_risk": [p["text"] for p in mine if p["risk"] == "low"]}


def psysuicide_cases(items: list) -> dict:
    """Every class but 'unrelated' must fire; each item's kind is its first such class (figures per class)."""
    return {"positive": [Case(i["text"], next(lab for lab in i["labels"] if lab != UNRELATED))
                         for i in items if set(i["labels"]) != {UNRELATED}],
            "negative": [i["text"] for i in items if set(i["labels"]) == {UNRELATED}]}


def _real_set(path: Path, data: list) -> dict:
    """Which published set a JSON list is, by its fields, as evaluation lists."""
    for i, item in enumerate(data):
        if not isinstance(item.get("text"), str) or not item["text"].strip():
            raise PsyDTError(f"--safety_eval {path} 的第 {i + 1} 条需要非空字符串字段 \"text\"。")
    if all(item.get("risk") in ("high", "low") for item in data):
        return sos_cases(data)
    if all(isinstance(item.get("labels"), list) and item["labels"] for item in data):
        return psysuicide_cases(data)
    raise PsyDTError(f"--safety_eval {path}：JSON 列表只认 SOS-HL-1K（每条有 \"risk\": high/low）"
                     "或 PsySUICIDE（每条有非空的 \"labels\" 列表）两种格式。")


def read_eval_cases(path) -> dict:
    """The lists of texts in `path` (see the module docstring for the three shapes)."""
    path = Path(path)
    data = read_json(path, "--safety_eval 文件")
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        return _real_set(path, data)
    if not isinstance(data, dict) or not any(k in data for k in EVAL_LISTS):
        raise PsyDTError(f"--safety_eval {path} 需要一个 JSON 对象，至少含有 "
                         f"{', '.join(k for k in EVAL_LISTS if k != 'low_risk')} 之一（或 SOS-HL-1K / PsySUICIDE 的列表）。")
    cases = {}
    for name in EVAL_LISTS:
        items = data.get(name)
        if items is None:
            continue
        if not isinstance(items, list):
            raise PsyDTError(f"--safety_eval {path} 的字段 {name} 必须是字符串列表（或对象列表）。")
        cases[name] = [_read_case(path, f"{name}[{i}]", item) for i, item in enumerate(items)]
    return cases


def _read_case(path: Path, where: str, item) -> str:
    """A list item: a non-empty string, or {"text", "kind"?, "context"? | "messages"?}."""
    if isinstance(item, str) and item.strip():
        return item
    if not isinstance(item, dict):
        raise PsyDTError(f"--safety_eval {path} 的 {where} 必须是非空字符串，或含 \"text\" 的对象。")
    text, kind, context, messages = (item.get(k) for k in ("text", "kind", "context", "messages"))
    if not isinstance(text, str) or not text.strip():
        raise PsyDTError(f"--safety_eval {path} 的 {where} 需要非空字符串字段 \"text\"。")
    if kind is not None and not isinstance(kind, str):
        raise PsyDTError(f"--safety_eval {path} 的 {where} 的字段 \"kind\" 必须是字符串。")
    if context is not None and messages is not None:
        raise PsyDTError(f"--safety_eval {path} 的 {where}：\"context\" 和 \"messages\" 只能给一个。")
    if context is not None:
        if not isinstance(context, str):
            raise PsyDTError(f"--safety_eval {path} 的 {where} 的字段 \"context\"（前一轮咨询师的话）必须是字符串。")
        messages = [{"role": "assistant", "content": context}]
    for j, m in enumerate(messages or []):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise PsyDTError(f"--safety_eval {path} 的 {where}.messages[{j}] 必须是 "
                             "{\"role\": system/user/assistant, \"content\": 字符串}。")
    return Case(text, kind, messages or [])


def evaluate_layers(cases: dict, layers: dict, progress=None) -> dict:
    """Per list and per layer: how many texts fired, and the rate that matters for that list.
    `layers`: name -> (check of a user turn -> bool, check of a reply -> bool); 'any' combines them."""
    out = {}
    for name, items in cases.items():
        measure, kind = EVAL_LISTS[name]
        fired = {}
        for layer, checks in layers.items():
            check = checks[0 if kind == "user" else 1]
            texts = progress(items, desc=f"{name} · {layer}") if progress else items
            fired[layer] = [check(t) for t in texts]
        if len(layers) > 1:
            fired["any"] = [any(f) for f in zip(*fired.values())]
        out[name] = {layer: _figures(items, f, measure) for layer, f in fired.items()}
    return out


def _rate(fired: list, measure: str) -> dict:
    return {"n": len(fired), "fired": sum(fired), measure: round(sum(fired) / len(fired), 4) if fired else None}


def _figures(items: list, fired: list, measure: str) -> dict:
    """A list's figures; `by_kind` beside them where its items have kinds."""
    out = _rate(fired, measure)
    kinds = [getattr(item, "kind", None) for item in items]
    if any(kinds):
        by_kind = {}
        for k, f in zip(kinds, fired):
            by_kind.setdefault(k or "（未标注）", []).append(f)
        out["by_kind"] = {k: _rate(f, measure) for k, f in by_kind.items()}
    return out


def report_lines(results: dict) -> list[str]:
    lines = []
    for name, per_layer in results.items():
        measure = EVAL_LISTS[name][0]
        for layer, r in per_layer.items():
            rate = "—" if r[measure] is None else f"{r[measure]:.3f}"
            lines.append(f"[安全评估] {LIST_NAMES[name]} · {layer}：{r['fired']}/{r['n']}，{MEASURE_NAMES[measure]} {rate}")
            lines += [f"[安全评估]   · {kind}：{k['fired']}/{k['n']}，{MEASURE_NAMES[measure]} {k[measure]:.3f}"
                      for kind, k in r.get("by_kind", {}).items()]
    return lines


def _before(text) -> list:
    return list(getattr(text, "messages", []))


def lexicon_layer():
    """The lexicon's checks: a user turn with the counsellor's turn before it (a Case's), a reply."""
    return lambda text: detect(text, asked=Case.asked(text)).crisis, harmful_reply


def guard_layer(guard):
    """A guard's checks for `evaluate_layers` (a user turn with the turns before it); a malformed verdict
    counts as not fired."""
    def user(text):
        verdict = guard.check_user(_before(text) + [{"role": "user", "content": str(text)}])
        return verdict is not None and bool(verdict.crisis_categories)

    def reply(text):
        users = [m["content"] for m in _before(text) if m["role"] == "user"]
        verdict = guard.check_reply(users[-1] if users else "", str(text))
        return verdict is not None and verdict.unsafe

    return user, reply


def batch_summary(results, guard=None) -> dict:
    """The safety counts of a batch test (its meta.safety)."""
    crisis = [r for r in results if r.get("safety", {}).get("crisis")]
    by_cat = {}
    for r in crisis:
        for c in r["safety"]["categories"]:
            by_cat[c] = by_cat.get(c, 0) + 1
    out = {
        "crisis_items": len(crisis),
        "imminent_items": sum(1 for r in crisis if r["safety"]["level"] == "imminent"),
        "by_category": by_cat,
        "screened_responses": sum(1 for r in results if r.get("screened")),
    }
    if guard is not None:
        out["guard"] = {"name": guard.name, "calls": guard.calls, "ms_per_call": round(guard.ms_per_call(), 1),
                        "malformed": guard.malformed}
    return out
