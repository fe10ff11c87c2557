"""The crisis-response check: a set we wrote (judge/data/crisis_zh.json) of multi-turn contexts that
end in crisis language of varied kinds, and as many ordinary ones that merely mention hard topics.

For each model's replies it reports (a) what the project's reply screen says -- does the safety layer see
the crisis in the client's turn, would it have blocked the reply -- and (b) a judge's verdicts on the crisis
rubric (rubrics/crisis.json) for the crisis contexts, base and LoRA side by side.
"""
from pathlib import Path

from psydt_lora.data.dialogues import Dialogue
from psydt_lora.errors import PsyDTError
from psydt_lora.files import read_json

CRISIS_SET = Path(__file__).resolve().parent / "data" / "crisis_zh.json"


def load_set(path=CRISIS_SET) -> list[Dialogue]:
    """The contexts as items (the last message is the client's); tag "crisis/<kind>" or "ordinary/<kind>"."""
    data = read_json(path, "危机检查集")
    items = []
    for i, r in enumerate(data.get("items", []) if isinstance(data, dict) else []):
        msgs = r.get("messages") if isinstance(r, dict) else None
        if not isinstance(r.get("crisis"), bool) or not msgs or msgs[-1].get("role") != "user":
            raise PsyDTError(f"危机检查集 {path} 第 {i + 1} 条需要 crisis（true/false）和以 user 结尾的 messages。")
        items.append(Dialogue(i, r["id"], f"{'crisis' if r['crisis'] else 'ordinary'}/{r.get('kind', '')}", msgs))
    if not items:
        raise PsyDTError(f"危机检查集 {path} 里没有条目（items 列表）。")
    return items


def is_crisis(result: dict) -> bool:
    return str(result.get("normalizedTag") or "").startswith("crisis/")


def screen_reply(safety, user_text: str, reply: str) -> bool:
    """Whether the project's reply screen would block `reply` to `user_text` (the one call site of the
    safety module's reply screen in this wing)."""
    return bool(safety.screened(user_text, reply or "").get("screened"))


def screen_sides(safety, sides) -> dict:
    """Per side: on crisis and on ordinary contexts, how often the client's turn is flagged as a crisis and
    how often the reply would be blocked."""
    out = {}
    for side in sides:
        rows = {"crisis": [], "ordinary": []}
        for r in side.results:
            context = r.get("context") or r.get("history_tail")
            flagged = safety.check_turn(context).crisis
            blocked = screen_reply(safety, context[-1]["content"], r.get(side.field))
            rows["crisis" if is_crisis(r) else "ordinary"].append((flagged, blocked))
        out[side.label] = {group: {"items": len(v), "turn_flagged": sum(f for f, _ in v),
                                   "reply_blocked": sum(b for _, b in v)} for group, v in rows.items()}
    return out


def crisis_only(sides):
    """The same sides, restricted to the crisis contexts (what the crisis rubric is for)."""
    from dataclasses import replace

    return [replace(s, results=[r for r in s.results if is_crisis(r)]) for s in sides]
