"""What a full judging run costs, in requests and tokens, counted with the real Qwen3 tokenizer on the real
prompts `psydt-judge` sends: CPsyCounE (all 45 dialogues, turn-based), the crisis set, and the PsyDTCorpus
test split (per-item means from the psydt-shaped test dialogues in ../shared/assets, scaled to its 4,311
items). The reference reply stands in for a model's reply (same length scale); outputs are the judge's
answer format (a list of numbers, one letter) and the reference length for generation.

Sessions (`psydt-judge simulate`): the shipped profiles, every session run to --max_turns (an upper
bound: a session the client or the counsellor ends is shorter), the client's and the counsellor's turns
stood in by real turns of the psydt-shaped dialogues (cycled), each request counted as sent: the client
prompt with the transcript so far, the counsellor's system prompt with the transcript, the session rubric
on every session, the crisis-session rubric on the crisis personas, pairwise in both orders for two
counsellors.

    PYTHONPATH=LLM_fine_turning python bench/judge_cost.py [--max_turns 20]
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
TOKENIZER = ASSETS / "qwen3-tokenizer"
PSYDT_TEST_ITEMS = 4311
DEFAULT_SYSTEM = "你是一位专业、温暖的心理咨询师，善于倾听，能够共情来访者并给予支持和引导。"


def tokens(tok, messages) -> int:
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, enable_thinking=False)
    return len(ids if isinstance(ids, list) else ids["input_ids"])  # transformers 5 returns a BatchEncoding


def stage_costs(tok, items, system):
    """Per-item (generation prompt, reply, rubric prompt, pairwise prompt) tokens."""
    from psydt_lora.evaluation.batch_run import context_messages
    from psydt_lora.judge.rubric import format_history, load_rubric
    from psydt_lora.judge.pairwise import load_prompt

    rubric, pair = load_rubric("cpsycoune"), load_prompt()
    rows = []
    for item in items:
        msgs, reference = context_messages(item, system)
        reply = reference or "我听到了你的担心，能多说说现在最让你难受的是什么吗？"
        turns = [m for m in msgs if m["role"] != "system"]
        pw = pair["template"].format(history=format_history(turns), reply_a=reply, reply_b=reply)
        rows.append((tokens(tok, msgs), len(tok(reply)["input_ids"]), tokens(tok, rubric.messages(turns, reply)),
                     tokens(tok, [{"role": "system", "content": pair["system"]}, {"role": "user", "content": pw}])))
    return rows


def report(name, rows, scale=1.0):
    n = len(rows) * scale
    mean = [sum(r[i] for r in rows) / len(rows) for i in range(4)]
    print(f"{name}: {n:.0f} 条；每条平均 生成输入 {mean[0]:.0f} / 回复 {mean[1]:.0f} / 评分输入 {mean[2]:.0f} / 两两比较输入 {mean[3]:.0f} token")
    print(f"  生成（LoRA + 基础模型）：{2 * n:.0f} 次请求，输入 {2 * n * mean[0] / 1e6:.2f}M，输出约 {2 * n * mean[1] / 1e6:.2f}M token")
    print(f"  评分（两个模型）：{2 * n:.0f} 次请求，输入 {2 * n * mean[2] / 1e6:.2f}M，输出约 {2 * n * 12 / 1e6:.3f}M token")
    print(f"  两两比较（两种顺序）：{2 * n:.0f} 次请求，输入 {2 * n * mean[3] / 1e6:.2f}M，输出约 {2 * n * 2 / 1e6:.3f}M token")


def stand_in_turns(dialogues, i: int, max_turns: int) -> list[dict]:
    """max_turns client/counsellor exchanges from real dialogues, starting at dialogue i, cycled."""
    pairs = []
    for d in dialogues[i:] + dialogues[:i]:
        m = [x for x in d.messages if x["role"] != "system"]
        pairs += [(a["content"], b["content"]) for a, b in zip(m, m[1:]) if a["role"] == "user" and b["role"] == "assistant"]
        if len(pairs) >= max_turns:
            break
    return [{"role": r, "content": c} for u, a in pairs[:max_turns] for r, c in (("user", u), ("assistant", a))]


def session_costs(tok, dialogues, max_turns: int) -> dict:
    """Requests and tokens of one counsellor's sessions with every shipped profile, and of judging them."""
    from psydt_lora.judge.profiles import shipped_profiles
    from psydt_lora.judge.rubric import load_rubric
    from psydt_lora.judge.session import client_messages, transcript_text
    from psydt_lora.judge.session_scores import session_messages, session_pairwise_prompt

    rubric, crisis, pair = load_rubric("session"), load_rubric("crisis_session"), session_pairwise_prompt()
    c = dict.fromkeys(("client_req", "client_in", "client_out", "gen_req", "gen_in", "gen_out", "judge_req",
                       "judge_in", "pair_in"), 0)
    for i, p in enumerate(shipped_profiles()):
        t = stand_in_turns(dialogues, i % len(dialogues), max_turns)
        for k in range(max_turns):
            if not (k == 0 and p.opening):
                c["client_req"] += 1
                c["client_in"] += tokens(tok, client_messages(p, t[:2 * k], k + 1))
                c["client_out"] += len(tok(t[2 * k]["content"])["input_ids"])
            c["gen_req"] += 1
            c["gen_in"] += tokens(tok, [{"role": "system", "content": DEFAULT_SYSTEM}, *t[:2 * k + 1]])
            c["gen_out"] += len(tok(t[2 * k + 1]["content"])["input_ids"])
        s = {"messages": t, "turns": max_turns, "ended_by": "max_turns"}
        for r in ([rubric, crisis] if p.crisis else [rubric]):
            c["judge_req"] += 1
            c["judge_in"] += tokens(tok, session_messages(r, s))
        text = transcript_text(t)
        user = pair["template"].format(history=f"来访者：{p.profile}", reply_a=text, reply_b=text)
        c["pair_in"] += 2 * tokens(tok, [{"role": "system", "content": pair["system"]}, {"role": "user", "content": user}])
    c["profiles"] = i + 1
    return c


def report_sessions(c: dict, max_turns: int) -> None:
    n = c["profiles"]
    print(f"整段会谈（内置 {n} 个设定，每场都谈满 {max_turns} 轮，一位咨询师；上限估计）：")
    print(f"  来访者：{c['client_req']} 次请求，输入 {c['client_in'] / 1e6:.2f}M，输出约 {c['client_out'] / 1e6:.3f}M token")
    print(f"  咨询师：{c['gen_req']} 次请求，输入 {c['gen_in'] / 1e6:.2f}M，输出约 {c['gen_out'] / 1e6:.3f}M token")
    print(f"  评分（整场 + 危机设定的危机评分）：{c['judge_req']} 次请求，输入 {c['judge_in'] / 1e6:.2f}M，输出约 {c['judge_req'] * 14 / 1e6:.3f}M token")
    print(f"  两位咨询师时：以上会谈与评分各翻倍，另加整场两两比较 {2 * n} 次请求，输入 {c['pair_in'] / 1e6:.2f}M token"
          "（两场按同长度估计）")


def main():
    parser = argparse.ArgumentParser(description="psydt-judge 一次完整运行的请求数和 token 数")
    parser.add_argument("--max_turns", type=int, default=20, help="simulate 的 --max_turns")
    parser.add_argument("--sessions_only", action="store_true", help="只算整段会谈")
    args = parser.parse_args()
    if not (TOKENIZER / "vocab.json").is_file():
        sys.exit(f"需要 {ASSETS}（真实的 Qwen3 分词器、CPsyCounE 和 psydt-shaped），这里没有。")
    from transformers import AutoTokenizer

    from psydt_lora.data.dialogues import read_dialogues

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    if not args.sessions_only:
        turn_based(tok)
    train, _ = read_dialogues(ASSETS / "psydt-shaped" / "train.json")
    report_sessions(session_costs(tok, train, args.max_turns), args.max_turns)


def turn_based(tok):
    from psydt_lora.data.dialogues import read_dialogues
    from psydt_lora.judge import cpsycoune
    from psydt_lora.judge.crisis import load_set

    items = cpsycoune.turn_items(cpsycoune.load_dialogues(ASSETS / "cpsycoune"))
    report("CPsyCounE（逐轮）", stage_costs(tok, items, DEFAULT_SYSTEM))
    crisis = load_set()
    report("危机检查集（评分表只评 42 条危机对话，约一半）", stage_costs(tok, crisis, DEFAULT_SYSTEM))
    test, _ = read_dialogues(ASSETS / "psydt-shaped" / "test.json")
    rows = stage_costs(tok, test, None)
    report(f"PsyDTCorpus 测试集（按 {len(rows)} 条样本的均值放大到 {PSYDT_TEST_ITEMS} 条）", rows, PSYDT_TEST_ITEMS / len(rows))


if __name__ == "__main__":
    main()
