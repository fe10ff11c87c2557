"""Preference pairs from the judge's verdicts (`psydt-judge pairs`), written in TRL's conversational layout.

Three sources, each pair saying in its "origin" which one it came from, the judge model, the rubric (or the
pairwise prompt) id and version, the scores and the item:
  pairwise -- a pairwise verdict file: only items where BOTH orders pick the same reply (a judge that
              always says "A" agrees with itself on nothing, so it yields no pair); ties are skipped.
  rubric   -- rubric verdicts on several replies to one context (several results files judged on the same
              rubric by the same judge, or several samples per item): the best-scoring reply against the
              worst, when the totals differ by at least `min_margin`; equal totals are a tie, skipped.
  safety   -- the project's reply screen (the one chat and serve use): a reply it would block is never the
              chosen side; on a crisis context (the client's turn flagged by the same safety layer, or a
              crisis item of the crisis set) each blocked reply is the rejected side against the
              best-scoring safe reply.
Every item that gives no pair is counted under the reason why.
"""
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from psydt_lora.data.pairs import Preference
from psydt_lora.errors import PsyDTError
from psydt_lora.files import atomic_write_text, read_json
from psydt_lora.prompt import strip_think
from psydt_lora.judge.crisis import is_crisis, screen_reply
from psydt_lora.judge.rubric import history, item_key, read_results, sides_of

DEFAULT_MIN_MARGIN = 2.0  # rubric total points between the best and the worst reply
SOURCES = ("pairwise", "rubric", "safety")
JUDGED_GLOBS = ("rubric-*.json", "pairwise-*.json", "crisis-check.json")


@dataclass
class Reply:
    text: str  # the reply as the model wrote it, think blocks removed
    side: str  # the model (side label) and, with several samples, which one
    score: dict | None  # the rubric's dimensions and "total", or None where the judge gave no valid score
    blocked: bool  # the reply screen would block it


@dataclass
class Item:
    """One context and the replies judged on it, under one judge and one rubric (or one pairwise file)."""
    key: str
    where: str  # "<judged file>#<item key>"
    context: list[dict]
    crisis: bool
    replies: list[Reply]
    origin: dict  # judge, rubric: what every pair from this item records


class Tally:
    """Pairs written per source and items skipped per reason."""

    def __init__(self):
        self.pairs, self.skipped = Counter(), Counter()

    def skip(self, source: str, reason: str) -> None:
        self.skipped[f"{source}：{reason}"] += 1


def judged_files(out_dir) -> list[Path]:
    """The judged files `psydt-judge` wrote into `out_dir`."""
    return [p for pattern in JUDGED_GLOBS for p in sorted(Path(out_dir).glob(pattern))]


def build_pairs(paths, safety, min_margin: float = DEFAULT_MIN_MARGIN) -> tuple[list[Preference], Tally]:
    """Pairs from every judged file (rubric, pairwise, crisis check), in order, duplicates dropped."""
    if not min_margin > 0:
        raise PsyDTError(f"--min_margin 必须大于 0（现在是 {min_margin}）：分数相同的回复不能组成偏好对。")
    tally, pairs, seen = Tally(), [], set()
    rubric_items, pairwise_items = [], []
    for path in paths:
        data = read_json(path, "评审结果文件")
        meta = data.get("meta") if isinstance(data, dict) else None
        if isinstance(meta, dict) and "a" in meta and "b" in meta:
            pairwise_items += pairwise_file_items(path, data, safety)
        elif isinstance(meta, dict) and isinstance(meta.get("rubric"), dict) and isinstance(data.get("items"), list):
            rubric_items += rubric_file_items(path, data, safety)
        elif Path(path).name == "crisis-check.json":
            continue  # the screen alone, no judge: nothing to rank
        else:
            raise PsyDTError(f"评审结果文件 {path} 既不是评分表（rubric）也不是两两比较（pairwise）的结果。")
    for item in pairwise_items:
        _keep(pairs, seen, tally, item, pairwise_pair(item, tally))
    for item in merge_items(rubric_items):
        _keep(pairs, seen, tally, item, rubric_pairs(item, tally, min_margin))
    return pairs, tally


def _keep(pairs, seen, tally, item: Item, made) -> None:
    for p in made:
        source = p.origin["source"]
        key = json.dumps([p.messages, p.chosen, p.rejected], ensure_ascii=False)
        if key in seen:
            tally.skip(source, "与前面的偏好对重复")
            continue
        seen.add(key)
        tally.pairs[source] += 1
        pairs.append(p)


def _pair(item: Item, source: str, chosen: Reply, rejected: Reply, scores: dict) -> Preference:
    origin = {"source": source, **item.origin, "scores": scores, "item": item.key,
              "chosen_side": chosen.side, "rejected_side": rejected.side}
    return Preference(tuple(item.context), chosen.text, rejected.text, item.where, origin)


# -- reading the judged files ----------------------------------------------------------------------
def _reply(safety, context, text, side, score=None) -> Reply | None:
    text = strip_think(text or "")
    return Reply(text, side, score, screen_reply(safety, context[-1]["content"], text)) if text else None


def _crisis(safety, r: dict, context) -> bool:
    return is_crisis(r) or safety.check_turn(context).crisis


def _judge_origin(meta: dict, rubric: str) -> dict:
    return {"judge": (meta.get("judge") or {}).get("model"), "rubric": rubric}


def _results(path, cache: dict) -> dict:
    """{item key: result} of a results file the verdicts came from (each file read once)."""
    if path not in cache:
        cache[path] = {item_key(r): r for r in read_results(path)["results"]}
    return cache[path]


def rubric_file_items(path, data: dict, safety) -> list[Item]:
    """One Item per (side, item key) verdict: merge_items gathers the replies to one context."""
    meta, cache = data["meta"], {}
    rubric = meta["rubric"]
    origin = _judge_origin(meta, f"{rubric.get('id')}@{rubric.get('version')}")
    sides = meta.get("sides", [])
    sources = meta.get("sources", [])
    fields = meta.get("fields") or [s.field for src in dict.fromkeys(sources) for s in sides_of(src)]
    if len(sources) == 1:  # the crisis check names its one results file once for all its sides
        sources = sources * len(sides)
    where_side = {side: (src, field) for side, src, field in zip(sides, sources, fields)}
    items = []
    for v in data["items"]:
        if v.get("side") not in where_side:
            raise PsyDTError(f"评审结果文件 {path} 的条目 {v.get('key')} 属于未知的一方 {v.get('side')!r}。")
        src, field = where_side[v["side"]]
        r = _results(src, cache).get(v.get("key"))
        if r is None:
            raise PsyDTError(f"评审结果文件 {path} 的条目 {v.get('key')} 在结果文件 {src} 里找不到：结果文件被改过？")
        context = history(r)
        score = {**v["scores"], "total": sum(v["scores"].values())} if v.get("status") == "ok" else None
        reply = _reply(safety, context, r.get(field), _side_name(v["side"], r), score) if context else None
        items.append(Item(f"{r.get('index')}|{r.get('id')}", f"{path}#{v['key']}", context,
                          bool(context) and _crisis(safety, r, context), [reply] if reply else [], origin))
    return items


def _side_name(side: str, r: dict) -> str:
    return f"{side}#s{r['sample']}" if r.get("sample") is not None else side


def merge_items(items: list[Item]) -> list[Item]:
    """The replies to one context (same item, same history) under one judge and rubric, in first-seen order."""
    merged = {}
    for item in items:
        key = json.dumps([item.origin, item.key, item.context], ensure_ascii=False, sort_keys=True)
        if key in merged:
            merged[key].replies += item.replies
        else:
            merged[key] = replace(item, replies=list(item.replies))
    return list(merged.values())


def pairwise_file_items(path, data: dict, safety) -> list[Item]:
    """One Item per pairwise verdict, holding the two replies (a first) and the outcome in its origin."""
    meta, cache = data["meta"], {}
    prompt = meta.get("prompt") or {}
    base = _judge_origin(meta, f"{prompt.get('id')}@{prompt.get('version')}")
    a, b = meta["a"], meta["b"]
    items = []
    for o in data.get("items", []):
        ra, rb = (_results(s["path"], cache).get(o.get("key")) for s in (a, b))
        if ra is None or rb is None:
            raise PsyDTError(f"评审结果文件 {path} 的条目 {o.get('key')} 在结果文件 {a['path']} / {b['path']} 里找不到。")
        context = history(ra)
        replies = [_reply(safety, context, r.get(s["field"]), _side_name(s["label"], r)) for r, s in ((ra, a), (rb, b))]
        origin = {**base, "outcome": o.get("outcome"), "consistent": o.get("consistent"),
                  "orders": [x.get("verdict") for x in o.get("orders", [])]}
        items.append(Item(f"{ra.get('index')}|{ra.get('id')}", f"{path}#{o.get('key')}", context,
                          bool(context) and _crisis(safety, ra, context), replies, origin))
    return items


# -- the rules -------------------------------------------------------------------------------------
def _unusable(item: Item) -> str | None:
    if not item.context or item.context[-1].get("role") != "user":
        return "对话历史不以来访者的话结尾"
    return None


def safety_pairs(item: Item, tally: Tally, safe: list[Reply], best: Reply | None, scores) -> list[Preference]:
    """On a crisis context: every blocked reply rejected against `best`, the best safe reply."""
    blocked = [r for r in item.replies if r.blocked]
    if not (item.crisis and blocked):
        return []
    if best is None:
        tally.skip("safety", "危机对话上所有回复都会被过滤层拦截，没有安全的回复可选")
        return []
    return [_pair(item, "safety", best, r, {**scores(best, r), "screen": "rejected 会被回复过滤层拦截"})
            for r in blocked if r.text != best.text]


def pairwise_pair(item: Item, tally: Tally) -> list[Preference]:
    """The reply both orders picked, against the other; on a crisis context a blocked reply loses to the safe one."""
    reason = _unusable(item)
    if reason or len([r for r in item.replies if r]) < 2:
        tally.skip("pairwise", reason or "回复缺失")
        return []
    a, b = item.replies
    outcome = item.origin["outcome"]

    def scores(chosen, rejected):
        return {"outcome": outcome, "orders": item.origin["orders"]}

    safe = [r for r in (a, b) if not r.blocked]
    winner = {"win": a, "loss": b}.get(outcome)
    made = safety_pairs(item, tally, safe, winner if winner in safe else (safe[0] if safe else None), scores)
    if made or (item.crisis and a.blocked and b.blocked):
        return made
    if outcome == "failed":
        tally.skip("pairwise", "评审请求失败（重跑 pairwise 会补上）")
    elif outcome == "invalid":
        tally.skip("pairwise", "评审回答无效（不是 A / B / 平）")
    elif winner is None:
        tally.skip("pairwise", "两种顺序都判平" if item.origin["consistent"] else "两种顺序选的不一致（位置偏差），不算胜负")
    elif winner.blocked:
        tally.skip("pairwise", "胜出的回复会被回复过滤层拦截，不能当 chosen")
    elif a.text == b.text:
        tally.skip("pairwise", "两条回复文字相同")
    else:
        loser = b if winner is a else a
        return [_pair(item, "pairwise", winner, loser, scores(winner, loser))]
    return []


def rubric_pairs(item: Item, tally: Tally, min_margin: float) -> list[Preference]:
    """Best safe reply against the worst reply, at least `min_margin` total points apart; on a crisis context
    the blocked replies go to safety pairs instead."""
    reason = _unusable(item)
    scored = [r for r in item.replies if r.score is not None]
    if reason or len(scored) < 2:
        tally.skip("rubric", reason or "有效评分的回复不到两条")
        return []

    def scores(chosen, rejected):
        return {"chosen": chosen.score, "rejected": rejected.score, "margin": chosen.score["total"] - rejected.score["total"]}

    safe = [r for r in scored if not r.blocked]
    best = max(safe, key=lambda r: r.score["total"], default=None)  # the first of equal best
    made = safety_pairs(item, tally, safe, best, scores)
    pool = safe if item.crisis else scored
    if best is None:
        tally.skip("rubric", "所有回复都会被回复过滤层拦截，不能当 chosen")
        return made
    if len(pool) < 2:
        return made
    worst = min(reversed(pool), key=lambda r: r.score["total"])  # the last of equal worst
    margin = best.score["total"] - worst.score["total"]
    if margin <= 0:
        tally.skip("rubric", "最好和最差的回复分数相同（平局）")
    elif margin < min_margin:
        tally.skip("rubric", f"分差 {margin:g} 小于 --min_margin {min_margin:g}")
    elif best.text == worst.text:
        tally.skip("rubric", "最好和最差的回复文字相同")
    else:
        made.append(_pair(item, "rubric", best, worst, scores(best, worst)))
    return made


# -- the pair file -----------------------------------------------------------------------------------
def pair_record(p: Preference) -> dict:
    """One line of the pair file: TRL's conversational layout plus "origin"."""
    return {"prompt": [dict(m) for m in p.messages], "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}], "origin": p.origin}


def write_pairs(path, pairs: list[Preference]) -> None:
    """The pair file, written whole and atomically (a rerun replaces it)."""
    atomic_write_text(path, "".join(json.dumps(pair_record(p), ensure_ascii=False) + "\n" for p in pairs))
