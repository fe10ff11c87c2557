"""A PsyDTCorpus-sized corpus of real length and shape, built from the real material in ../shared/assets:
the real record (id 0, REBT system prompt) and the 48 psydt-shaped dialogues, their rounds recombined
into 4,760 dialogues of 19-71 messages (mean about 37), as the real training file has."""
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
TOKENIZER = ASSETS / "qwen3-tokenizer"


def require_assets():
    if not (TOKENIZER / "vocab.json").is_file():
        sys.exit(f"需要 {ASSETS}（真实的 Qwen3 分词器和 PsyDTCorpus 样本），这里没有。")


def rounds_of(dialogue):
    msgs = dialogue["messages"][1:]
    return [msgs[i:i + 2] for i in range(0, len(msgs) - 1, 2) if msgs[i]["role"] == "user"]


def build(n=4760, seed=0):
    """List of records in the PsyDTCorpus schema."""
    from psydt_lora.data.dialogues import Dialogue

    record = json.loads((ASSETS / "psydt-sample" / "train.json").read_text("utf-8"))
    shaped = json.loads((ASSETS / "psydt-shaped" / "train.json").read_text("utf-8"))
    system = record[0]["messages"][0]
    # rounds of about the real corpus' lengths (replies ~58 characters, client turns ~32)
    pool = [r for d in record + shaped for r in rounds_of(d) if len(r[0]["content"]) <= 55 and len(r[1]["content"]) <= 95]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 10 == 0:  # keep the real record itself in the mix
            out.append(Dialogue(i, i, "婚恋", record[0]["messages"]))
            continue
        n_rounds = min(35, max(9, int(rng.gauss(18, 6))))
        msgs = [system] + [m for r in rng.choices(pool, k=n_rounds) for m in r]
        out.append(Dialogue(i, i, "情绪", msgs))
    return out


def describe(corpus) -> str:
    msgs = [m for d in corpus for m in d.messages[1:]]
    mean = lambda role: sum(len(m["content"]) for m in msgs if m["role"] == role) / max(1, sum(m["role"] == role for m in msgs))  # noqa: E731
    return (f"{len(corpus)} dialogues, {sum(len(d.messages) for d in corpus) / len(corpus):.1f} messages on average, "
            f"replies {mean('assistant'):.0f} chars, client turns {mean('user'):.0f} chars on average")
