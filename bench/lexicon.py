"""Time per message of the lexicon: detect() on user turns and harmful_reply() on counsellor replies, this
checkout's rules against an older copy's (default: the frozen worktree /work/before), in one run, each in its
own Python process so the two packages never meet. Also the start-up cost: importing the rules (OpenCC comes
with them), the first detect() (the lexicon compiled), and jieba's dictionary, loaded once on the first
negation read.

    python bench/lexicon.py [--old /work/before/LLM_fine_turning] [--rounds 5]

It also times one 100,000-character message (the turns joined): the clause marks are found once per text,
so this grows linearly with length (it was quadratic: a 300k-character message took about 150 s).

Texts: the user and counsellor turns of the real dialogues in ../shared/assets (psydt-sample, psydt-shaped)
and this project's own labelled sentences (tests/safety_cases.py); nothing is printed of them."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"

MEASURE = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from psydt_lora.safety import rules
t_import = time.perf_counter() - t0
users, replies, rounds = json.loads(open(sys.argv[2], encoding="utf-8").read())
t0 = time.perf_counter(); rules.detect("今天天气不错"); t_first = time.perf_counter() - t0
t_jieba = None
if hasattr(rules, "words"):
    t0 = time.perf_counter(); rules.words("我不想"); t_jieba = time.perf_counter() - t0
for t in users[:50]: rules.detect(t)  # warm
best_user = best_reply = float("inf")
for _ in range(rounds):
    t0 = time.perf_counter()
    for t in users: rules.detect(t)
    best_user = min(best_user, (time.perf_counter() - t0) / len(users))
    t0 = time.perf_counter()
    for t in replies: rules.harmful_reply(t)
    best_reply = min(best_reply, (time.perf_counter() - t0) / len(replies))
joined = "\n".join(users)
long = (joined * (100_000 // max(len(joined), 1) + 1))[:100_000]  # one 100k-character message: linear, not quadratic
t0 = time.perf_counter(); rules.detect(long); t_long = time.perf_counter() - t0
t0 = time.perf_counter(); rules.harmful_reply(long); t_long_reply = time.perf_counter() - t0
print(json.dumps({"import_s": t_import, "first_detect_s": t_first, "jieba_s": t_jieba,
                  "detect_ms": best_user * 1e3, "harmful_reply_ms": best_reply * 1e3,
                  "long_detect_s": t_long, "long_harmful_reply_s": t_long_reply}))
"""


def texts() -> tuple[list, list]:
    users, replies = [], []
    for name in ("psydt-sample", "psydt-shaped"):
        path = ASSETS / name / "train.json"
        if path.is_file():
            for d in json.loads(path.read_text("utf-8")):
                users += [m["content"] for m in d["messages"] if m["role"] == "user"]
                replies += [m["content"] for m in d["messages"] if m["role"] == "assistant"]
    sys.path.insert(0, str(ROOT / "tests"))
    from safety_cases import EN_NEGATIVE, EN_POSITIVE, ZH_NEGATIVE, ZH_POSITIVE

    users += [t for t, _ in ZH_POSITIVE + EN_POSITIVE] + ZH_NEGATIVE + EN_NEGATIVE
    return users, replies or users


def measure(package: Path, data: Path, rounds: int) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(package), str(data), str(rounds)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="词典每条消息的耗时：本仓库的规则对比旧版本（同一次运行）。")
    p.add_argument("--old", default="/work/before/LLM_fine_turning", help="旧版本的 LLM_fine_turning 目录")
    p.add_argument("--rounds", type=int, default=5, help="每个集合跑几遍，取最快的一遍")
    args = p.parse_args(argv)
    users, replies = texts()
    data = Path("/tmp") / f"psydt_lexicon_bench_{abs(hash(ROOT))}.json"
    data.write_text(json.dumps([users, replies, args.rounds], ensure_ascii=False), "utf-8")
    try:
        new = measure(ROOT / "LLM_fine_turning", data, args.rounds)
        old = measure(Path(args.old), data, args.rounds) if Path(args.old).is_dir() else None
    finally:
        data.unlink(missing_ok=True)
    print(f"[词典基准] {len(users)} 条用户消息、{len(replies)} 条回复，每组 {args.rounds} 遍取最快")
    for name, r in (("新", new), ("旧", old)):
        if r is None:
            print(f"[词典基准] 旧版本 {args.old} 不存在，只测了新版本")
            continue
        jieba = f"，jieba 词典首次加载 {r['jieba_s'] * 1e3:.0f} ms" if r["jieba_s"] is not None else ""
        print(f"[词典基准] {name}：detect {r['detect_ms']:.3f} ms/条，harmful_reply {r['harmful_reply_ms']:.3f} ms/条；"
              f"导入 {r['import_s'] * 1e3:.0f} ms，首次 detect {r['first_detect_s'] * 1e3:.0f} ms{jieba}")
        if "long_detect_s" in r:
            print(f"[词典基准] {name}：一条 10 万字的消息 detect {r['long_detect_s']:.2f} s，"
                  f"harmful_reply {r['long_harmful_reply_s']:.2f} s")
    if old:
        print(f"[词典基准] 新/旧：detect ×{new['detect_ms'] / old['detect_ms']:.2f}，"
              f"harmful_reply ×{new['harmful_reply_ms'] / old['harmful_reply_ms']:.2f}")
    print(json.dumps({"new": new, "old": old, "users": len(users), "replies": len(replies)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
