"""Benchmark 1: building training samples for a 4,760-dialogue corpus of real length, real tokenizer.

    python bench/preprocess.py [--baseline_dialogues 100]

Ours (render each dialogue once, tokenise in batches) against the original tutorial's method
(for every reply, apply_chat_template + tokenise the whole prefix again, one dialogue at a time).
Both run on the same dialogues in the same process; the baseline is timed on a subset (it is slow)
and the ratio is taken on that subset. Note: in transformers 5 `use_fast=False` gives the same
Rust-backed tokenizer, so the ratio measures the algorithm, not the tokenizer implementation.
"""
import argparse
import os
import time

from corpus import TOKENIZER, build, describe, require_assets


def tutorial_samples(dialogues, tok, max_length):
    """The original tutorial's way: re-render and re-tokenise every prefix from scratch."""
    out = []
    for d in dialogues:
        msgs = d.messages
        for i, m in enumerate(msgs):
            if m["role"] != "assistant" or i == 0:
                continue
            prompt = tok.apply_chat_template(msgs[:i], tokenize=True, add_generation_prompt=True, enable_thinking=False)["input_ids"]
            full = tok.apply_chat_template(msgs[: i + 1], tokenize=True, enable_thinking=False)["input_ids"]
            labels = [-100] * len(prompt) + full[len(prompt):]
            out.append((full[:max_length], labels[:max_length]))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dialogues", type=int, default=4760)
    p.add_argument("--baseline_dialogues", type=int, default=100)
    p.add_argument("--max_length", type=int, default=2048)
    args = p.parse_args()
    require_assets()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import AutoTokenizer

    from psydt_lora.data.samples import build_training_samples

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    slow = AutoTokenizer.from_pretrained(str(TOKENIZER), use_fast=False)
    corpus = build(args.dialogues)
    subset = corpus[: args.baseline_dialogues]

    t = time.perf_counter()
    base = tutorial_samples(subset, slow, args.max_length)
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    ours_subset, _ = build_training_samples(subset, tok, args.max_length, "per_turn")
    t_ours_subset = time.perf_counter() - t
    rows = []
    for mode in ("per_turn", "shared_prefix"):
        t = time.perf_counter()
        samples, stats = build_training_samples(corpus, tok, args.max_length, mode)
        rows.append((mode, time.perf_counter() - t, stats))

    print(f"corpus: {describe(corpus)}")
    print(f"{'method':<34}{'dialogues':>10}{'samples':>10}{'tokens':>13}{'seconds':>10}")
    print(f"{'tutorial (re-tokenise prefixes)':<34}{len(subset):>10}{len(base):>10}{sum(len(x) for x, _ in base):>13,}{t_base:>10.2f}")
    print(f"{'ours, per_turn (same subset)':<34}{len(subset):>10}{len(ours_subset):>10}{sum(len(s.input_ids) for s in ours_subset):>13,}{t_ours_subset:>10.2f}")
    for mode, secs, stats in rows:
        print(f"{'ours, ' + mode + ' (full corpus)':<34}{stats.dialogues:>10}{stats.samples:>10}{stats.tokens:>13,}{secs:>10.2f}")
    print(f"speed-up on the same {len(subset)} dialogues: {t_base / t_ours_subset:.1f}x; "
          f"tutorial method extrapolated to the full corpus: {t_base * len(corpus) / len(subset):.0f} s")
    cache_rows(corpus, tok, args.max_length, rows)


def cache_rows(corpus, tok, max_length, rows):
    """The sample cache on the full corpus: first run (build + store) and rerun (read back), per mode,
    against the plain build measured above in the same run."""
    import json
    import tempfile
    from pathlib import Path

    from psydt_lora.data.sample_cache import load_or_build
    from psydt_lora.data.samples import build_training_samples

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.json"
        data.write_text(json.dumps([{"id": d.id, "normalizedTag": d.tag, "messages": d.messages} for d in corpus],
                                   ensure_ascii=False), "utf-8")
        print(f"{'sample cache, ' + 'mode':<34}{'plain build':>12}{'first run':>12}{'rerun':>10}")
        for mode, plain, _ in rows:
            timings = []
            for _ in range(2):
                t = time.perf_counter()
                samples, _ = load_or_build(data, tok, {"max_length": max_length, "mode": mode}, lambda: build_training_samples(
                    corpus, tok, max_length, mode), say=lambda *a: None)
                len(samples)
                timings.append(time.perf_counter() - t)
            print(f"{mode:<34}{plain:>11.2f}s{timings[0]:>11.2f}s{timings[1]:>9.2f}s")


if __name__ == "__main__":
    main()
