"""What a full judging run costs, in requests and tokens, counted with the real Qwen3 tokenizer on the real
prompts `psydt-judge` sends: CPsyCounE (all 45 dialogues, turn-based), the crisis set, and the PsyDTCorpus
test split (per-item means from the psydt-shaped test dialogues in ../shared/assets, scaled to its 4,311
items). The reference reply stands in for a model's reply (same length scale); outputs are the judge's
answer format (a list of numbers, one letter) and the reference length for generation.

    PYTHONPATH=LLM_fine_turning python bench/judge_cost.py
"""
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
    from psydt_lora.evaluation.batch_run import _context_messages
    from psydt_lora.judge.rubric import format_history, load_rubric
    from psydt_lora.judge.pairwise import load_prompt

    rubric, pair = load_rubric("cpsycoune"), load_prompt()
    rows = []
    for item in items:
        msgs, reference = _context_messages(item, system)
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


def main():
    if not (TOKENIZER / "vocab.json").is_file():
        sys.exit(f"需要 {ASSETS}（真实的 Qwen3 分词器、CPsyCounE 和 psydt-shaped），这里没有。")
    from transformers import AutoTokenizer

    from psydt_lora.data.dialogues import read_dialogues
    from psydt_lora.judge import cpsycoune
    from psydt_lora.judge.crisis import load_set

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    items = cpsycoune.turn_items(cpsycoune.load_dialogues(ASSETS / "cpsycoune"))
    report("CPsyCounE（逐轮）", stage_costs(tok, items, DEFAULT_SYSTEM))
    crisis = load_set()
    report("危机检查集（评分表只评 42 条危机对话，约一半）", stage_costs(tok, crisis, DEFAULT_SYSTEM))
    test, _ = read_dialogues(ASSETS / "psydt-shaped" / "test.json")
    rows = stage_costs(tok, test, None)
    report(f"PsyDTCorpus 测试集（按 {len(rows)} 条样本的均值放大到 {PSYDT_TEST_ITEMS} 条）", rows, PSYDT_TEST_ITEMS / len(rows))


if __name__ == "__main__":
    main()
