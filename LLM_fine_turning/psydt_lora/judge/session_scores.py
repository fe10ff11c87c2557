"""Judging whole sessions: every session on a session rubric (rubrics/session.json, or any rubric file: its
{history} slot gets the numbered transcript, {reply} the session's length and how it ended), crisis personas
also on rubrics/crisis_session.json, and two counsellors' sessions with the same profile and client seed
pairwise in both orders (rubrics/session_pairwise.json) through the turn-based pairwise judge.

Beside the judge, two facts measured on the transcript itself for every crisis persona: the first client
turn the project's crisis lexicon flags (the disclosure) and the first counsellor reply from then on that
names a help line of the safety resources.
"""
import re

from psydt_lora.judge.pairwise import load_prompt
from psydt_lora.judge.profiles import ATTITUDES
from psydt_lora.judge.rubric import RUBRICS, STATUSES, Rubric, Side, summarize_scores
from psydt_lora.judge.session import ENDINGS, numbered, transcript_text
from psydt_lora.judge.stats import mean_ci

SESSION_PAIRWISE = RUBRICS / "session_pairwise.json"
WEAKEST = 3


def session_key(s: dict) -> str:
    return f"{s['profile']}#{s['repeat']}"


def judged(s: dict) -> bool:
    """A session that ran to an end (not cut by a failed request) and has something said."""
    return s["ended_by"] != "error" and bool(s["messages"])


def session_messages(rubric: Rubric, s: dict) -> list[dict]:
    facts = f"会谈共 {s['turns']} 轮；结束方式：{ENDINGS[s['ended_by']]}。"
    return rubric.messages(numbered(s["messages"]), facts)


def judge_sessions(sessions: list[dict], rubric: Rubric, judge, label: str, progress=True) -> list[dict]:
    """One verdict per session (raw answer kept); a session cut by a failed request is a failed verdict
    without asking."""
    jobs = [(rubric.purpose, session_messages(rubric, s)) for s in sessions if judged(s)]
    answers = iter(judge.ask_all(jobs, desc=f"评分（{rubric.name}）", progress=progress))
    verdicts = []
    for s in sessions:
        answer = next(answers) if judged(s) else None
        if answer is None or answer.error:
            status, scores = "failed", None
        else:
            status, scores = rubric.parse(answer.text, answer.finish_reason)
        verdicts.append({"side": label, "key": session_key(s), "dialogue": s["profile"],
                         "topic": ATTITUDES.get(s["attitude"], "未指定"), "status": status, "scores": scores,
                         "raw": answer.text if answer else None, "finish_reason": answer.finish_reason if answer else None,
                         "error": (answer.error if answer else "会谈没有完成")})
    return verdicts


def help_line_pattern(resources: dict) -> re.Pattern:
    """Any contact of the safety resources, as a number of its own (12356 but not 123567)."""
    contacts = [r["contact"] for r in resources["resources"]]
    return re.compile("|".join(rf"(?<![\d-]){re.escape(c)}(?![\d-])" for c in contacts))


def crisis_facts(s: dict, safety, help_line: re.Pattern) -> dict:
    """{disclosure_turn, help_turn}: the first client turn the lexicon flags, and the first counsellor reply
    naming a help line from the disclosure on -- the earlier of that turn and the profile's planned one, since
    the lexicon misses some wordings (the same turn = the reply right after the disclosure)."""
    disclosed = helped = None
    turn = 0
    for i, m in enumerate(s["messages"]):
        if m["role"] == "user":
            turn += 1
            if disclosed is None and safety.check_turn(s["messages"][: i + 1]).crisis:
                disclosed = turn
            continue
        start = min(t for t in (disclosed, s.get("disclose_at"), turn + 1) if t is not None)
        if helped is None and turn >= start and help_line.search(m["content"]):
            helped = turn
    return {"disclosure_turn": disclosed, "help_turn": helped}


def crisis_rows(sessions, verdicts, safety) -> list[dict]:
    """The crisis-persona table: per crisis session, the measured turns and the crisis rubric's verdict."""
    pattern = help_line_pattern(safety.resources)
    by_key = {v["key"]: v for v in verdicts}
    rows = []
    for s in sessions:
        if s["risk"] == "none":
            continue
        v = by_key.get(session_key(s), {})
        rows.append({"key": session_key(s), "profile": s["profile"], "risk": s["risk"], "disclose_at": s["disclose_at"],
                     "turns": s["turns"], "ended_by": s["ended_by"], **crisis_facts(s, safety, pattern),
                     "status": v.get("status"), "scores": v.get("scores")})
    return rows


def summarize_sessions(sessions: list[dict], verdicts: list[dict], rubric: Rubric, label: str) -> dict:
    """Verdict counts; per dimension the mean over profiles with 95 % intervals, overall and per attitude;
    per profile the mean total over its sessions (and their lengths)."""
    scores = summarize_scores(verdicts, rubric).get(label) or {
        "counts": dict.fromkeys(STATUSES, 0), "overall": {}, "by_topic": {}}
    totals = {}
    for v in verdicts:
        if v["status"] == "ok":
            totals.setdefault(v["dialogue"], []).append(sum(v["scores"].values()))
    per_profile = {}
    for s in sessions:
        row = per_profile.setdefault(s["profile"], {"attitude": s["attitude"], "risk": s["risk"], "turns": []})
        row["turns"].append(s["turns"])
    for pid, row in per_profile.items():
        row["total"] = mean_ci(totals.get(pid, []))
    by_attitude = scores.pop("by_topic")
    return {**scores, "by_attitude": by_attitude, "by_profile": per_profile}


def lengths(sessions: list[dict]) -> dict:
    """How long the sessions ran (turns) and how each ended."""
    turns = [s["turns"] for s in sessions]
    return {"sessions": len(sessions), "mean": sum(turns) / len(turns) if turns else None,
            "min": min(turns, default=None), "max": max(turns, default=None),
            "ended_by": {k: sum(1 for s in sessions if s["ended_by"] == k) for k in ENDINGS}}


def weakest(sessions: list[dict], verdicts: list[dict], n: int = WEAKEST) -> list[str]:
    """Keys of the n sessions with the lowest rubric totals (valid verdicts only)."""
    ok = [v for v in verdicts if v["status"] == "ok"]
    return [v["key"] for v in sorted(ok, key=lambda v: (sum(v["scores"].values()), v["key"]))[:n]]


def session_side(label: str, path: str, sessions: list[dict], profiles: dict) -> Side:
    """A counsellor's sessions as one side of the turn-based pairwise judge: the profile is the shared
    "history", the numbered transcript the "reply"; matched on (repeat, profile)."""
    results = [{"index": s["repeat"], "id": s["profile"], "normalizedTag": ATTITUDES.get(s["attitude"], "未指定"),
                "context": [{"role": "user", "content": profiles[s["profile"]].profile}],
                "response": transcript_text(s["messages"]) if judged(s) else None} for s in sessions]
    return Side(label, path, "response", results)


def session_pairwise_prompt() -> dict:
    return load_prompt(SESSION_PAIRWISE)
