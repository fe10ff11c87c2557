"""The `psydt-judge simulate` run: for each counsellor, the sessions with every profile (judge/session.py),
their transcripts as JSON Lines (sessions-<label>.jsonl), then -- with a judge -- the session rubric on every
session, the crisis-session rubric on the crisis personas, and with two counsellors the sessions compared
pairwise in both orders; verdicts and summaries in simulate-<label>.json and session-pairwise-<a>-vs-<b>.json
(the report's sessions section reads them).
"""
import json
from dataclasses import dataclass
from pathlib import Path

from psydt_lora.files import atomic_write_json, atomic_write_text
from psydt_lora.judge.pairwise import judge_pairs, summarize_verdicts
from psydt_lora.judge.profiles import Profile
from psydt_lora.judge.rubric import load_rubric, summarize_scores
from psydt_lora.judge.session import run_sessions
from psydt_lora.judge.session import ENDINGS
from psydt_lora.judge.session_scores import (crisis_rows, judge_sessions, lengths, session_pairwise_prompt,
                                             session_side, summarize_sessions, weakest)

CRISIS_RUBRIC = "crisis_session"


@dataclass
class Counsellor:
    label: str
    endpoint: object  # judge.endpoint.Endpoint
    client: object  # the simulated client's Endpoint for this counsellor's sessions (its own usage)


def write_sessions(path: Path, sessions: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in sessions))


def simulate(profiles: list[Profile], counsellors: list[Counsellor], judge, out_dir, safety, rubric: str, source: str,
             system: str, max_turns: int, repeats: int, base_seed: int, progress: bool = True) -> list[str]:
    """Runs, judges and writes everything; returns the lines to print."""
    out_dir = Path(out_dir)
    rubric, crisis_rubric = load_rubric(rubric), load_rubric(CRISIS_RUBRIC)  # both checked before any request
    lines, done = [], []
    for c in counsellors:
        sessions, seconds = run_sessions(profiles, c.client, c.endpoint, system, max_turns, repeats, base_seed, progress)
        path = out_dir / f"sessions-{c.label}.jsonl"
        write_sessions(path, sessions)
        meta = {"label": c.label, "profiles": source, "max_turns": max_turns, "sessions_per_profile": repeats,
                "client_seed": base_seed, "transcripts": path.name, "seconds": seconds,
                "counsellor": c.endpoint.config.describe(), "client": c.client.config.describe(),
                "usage": {"counsellor": vars(c.endpoint.usage), "client": vars(c.client.usage)}}
        result = {"meta": meta, "lengths": lengths(sessions), "summary": None}
        if judge is not None:
            result.update(judged_sessions(sessions, c.label, judge, rubric, crisis_rubric, safety, progress))
            meta.update(judge=judge.config.describe(), judge_usage=dict(vars(judge.usage)), rubric=rubric.info(),
                        crisis_rubric=crisis_rubric.info())
        else:
            result["crisis"] = {"rows": crisis_rows(sessions, [], safety)}
        atomic_write_json(out_dir / f"simulate-{c.label}.json", result)
        ended = "，".join(f"{ENDINGS[k]} {n}" for k, n in result["lengths"]["ended_by"].items() if n)
        lines.append(f"[会谈] {c.label}：{len(sessions)} 场写入 {path}（{ended}）")
        if result.get("summary"):
            counts = result["summary"]["counts"]
            lines.append(f"[评审] {c.label}：有效 {counts['ok']}，其余 {sum(counts.values()) - counts['ok']}（{counts}）")
        done.append((c, path, sessions))
    if judge is not None and len(done) == 2:
        lines.append(pairwise_sessions(done, profiles, judge, out_dir, progress))
    return lines


def judged_sessions(sessions, label, judge, rubric, crisis_rubric, safety, progress) -> dict:
    verdicts = judge_sessions(sessions, rubric, judge, label, progress)
    crisis = [s for s in sessions if s["risk"] != "none"]
    crisis_verdicts = judge_sessions(crisis, crisis_rubric, judge, label, progress) if crisis else []
    return {"items": verdicts, "summary": summarize_sessions(sessions, verdicts, rubric, label),
            "weakest": weakest(sessions, verdicts),
            "crisis": {"rows": crisis_rows(sessions, crisis_verdicts, safety), "items": crisis_verdicts,
                       "summary": summarize_scores(crisis_verdicts, crisis_rubric).get(label)}}


def pairwise_sessions(done, profiles, judge, out_dir, progress) -> str:
    """Both counsellors' sessions on the same profiles and client seeds, each pair asked in both orders."""
    by_id = {p.id: p for p in profiles}
    (ca, pa, sa), (cb, pb, sb) = done
    a, b = session_side(ca.label, str(pa), sa, by_id), session_side(cb.label, str(pb), sb, by_id)
    prompt = session_pairwise_prompt()
    outcomes = judge_pairs(a, b, judge, prompt, progress=progress)
    summary = summarize_verdicts(outcomes)
    atomic_write_json(out_dir / f"session-pairwise-{a.label}-vs-{b.label}.json",
                      {"meta": {"a": {"label": a.label, "path": a.path}, "b": {"label": b.label, "path": b.path},
                                "prompt": {"id": prompt["id"], "version": prompt["version"]},
                                "judge": judge.config.describe(), "usage": dict(vars(judge.usage))},
                       "items": outcomes, "summary": summary})
    n = summary["counts"]
    return (f"[整场两两比较] {a.label} 对 {b.label}：胜 {n['win']}，平 {n['tie']}，负 {n['loss']}，无效 {n['invalid']}，"
            f"请求失败 {n['failed']}")
