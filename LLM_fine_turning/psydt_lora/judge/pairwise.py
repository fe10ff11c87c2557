"""Pairwise judging: two sides' replies to the same items, each pair asked in both orders (A/B and B/A).

A win counts only when both orders pick the same side; orders that disagree, and ties, count as ties.
An answer that is not exactly `A`, `B` or `平` makes the item invalid: counted, kept raw, not scored; a
request that failed for good makes it failed (counted apart, the failure's kind in `failures`).
Rates carry 95 % intervals from resampling dialogues; the position-consistency rate is the share of
valid items whose two orders agree (both pick the same side, or both say tie).
"""
from collections import defaultdict

from psydt_lora.errors import PsyDTError
from psydt_lora.files import read_json
from psydt_lora.prompt import strip_think
from psydt_lora.judge.endpoint import failure_counts
from psydt_lora.judge.rubric import RUBRICS, format_history, history, item_key
from psydt_lora.judge.stats import ratio_ci

ANSWERS = {"A": "A", "B": "B", "平": "tie"}


def load_prompt(path=None) -> dict:
    path = path or RUBRICS / "pairwise.json"
    data = read_json(path, "两两比较提示词文件")
    for key in ("id", "version", "system", "template"):
        if key not in data:
            raise PsyDTError(f"两两比较提示词文件 {path} 缺少字段 {key!r}。")
    return data


def parse(text: str | None) -> str | None:
    """'A', 'B', 'tie', or None when the answer is not exactly one of A / B / 平."""
    return ANSWERS.get(strip_think(text or "").strip())


def pairs(a, b) -> list[tuple[dict, dict]]:
    """Items both sides answered, matched by (index, id), in a's order; a context that differs is an error."""
    theirs = {item_key(r): r for r in b.results}
    out = []
    for r in a.results:
        other = theirs.get(item_key(r))
        if other is None:
            continue
        if history(r) != history(other):
            raise PsyDTError(f"{a.path} 与 {b.path} 的条目 {item_key(r)} 对话历史不同：两份结果不是同一个测试集。")
        out.append((r, other))
    if not out:
        raise PsyDTError(f"{a.path} 与 {b.path} 没有共同的条目（按 index 和 id 对应）。")
    return out


def judge_pairs(a, b, endpoint, prompt: dict, progress=True) -> list[dict]:
    """Per item: both orders asked; the outcome from a's point of view: win / loss / tie / invalid / failed."""
    matched = pairs(a, b)
    purpose = f"pairwise:{prompt['id']}@{prompt['version']}"
    jobs = []
    for ra, rb in matched:
        text_a, text_b = ra.get(a.field) or "（空回复）", rb.get(b.field) or "（空回复）"
        for first, second in ((text_a, text_b), (text_b, text_a)):
            user = prompt["template"].format(history=format_history(history(ra)), reply_a=first, reply_b=second)
            jobs.append((purpose, [{"role": "system", "content": prompt["system"]}, {"role": "user", "content": user}]))
    answers = endpoint.ask_all(jobs, desc=f"两两比较（{a.label} vs {b.label}）", progress=progress)
    out = []
    for n, (ra, _) in enumerate(matched):
        first, second = answers[2 * n], answers[2 * n + 1]
        v1, v2 = parse(first.text), parse(second.text)
        # the swapped order names a's reply "B": map both verdicts to sides
        s1 = {"A": "a", "B": "b", "tie": "tie"}.get(v1)
        s2 = {"A": "b", "B": "a", "tie": "tie"}.get(v2)
        if first.error or second.error:
            outcome = "failed"
        elif s1 is None or s2 is None:
            outcome = "invalid"
        else:
            outcome = {"a": "win", "b": "loss"}.get(s1, "tie") if s1 == s2 else "tie"
        out.append({"key": item_key(ra), "dialogue": str(ra.get("id")), "topic": ra.get("normalizedTag") or "（无标签）",
                    "outcome": outcome, "consistent": None if outcome in ("invalid", "failed") else s1 == s2,
                    "orders": [{"raw": first.text, "verdict": s1, "error": first.error},
                               {"raw": second.text, "verdict": s2, "error": second.error}]})
    return out


def summarize_verdicts(outcomes: list[dict]) -> dict:
    """Win / tie / loss rates over valid items with 95 % intervals (dialogues resampled), the
    position-consistency rate, the counts of invalid and failed items, the failed requests by kind."""
    per = defaultdict(lambda: defaultdict(int))
    for o in outcomes:
        if o["outcome"] not in ("invalid", "failed"):
            d = per[o["dialogue"]]
            d[o["outcome"]] += 1
            d["consistent"] += o["consistent"]
            d["n"] += 1
    totals = [d["n"] for d in per.values()]
    out = {k: ratio_ci([d[k] for d in per.values()], totals) for k in ("win", "tie", "loss", "consistent")}
    out["counts"] = {k: sum(1 for o in outcomes if o["outcome"] == k) for k in ("win", "tie", "loss", "invalid", "failed")}
    out["failures"] = failure_counts(order["error"] for o in outcomes for order in o["orders"])
    return out
