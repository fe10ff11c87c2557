"""Benchmark 2: the cost of one epoch in each sample mode, on CPU, same data, same model.

    python bench/train_cost.py [--dialogues 6] [--batch_size 2]
    python bench/train_cost.py --dialogues 48 --batch_size 1 --heads fused   # the peer benchmark's dialogues

A small random Qwen3 (2 layers, hidden 64, the real 151,936-token vocabulary) with LoRA on all linear
layers trains one epoch over the first dialogues of psydt-shaped/train.json (real tokenizer) in
per_turn, shared_prefix and dialogue modes. Each mode runs in its own process so peak memory (max RSS)
is its own. Ratios are against per_turn, measured in the same run. With the fused head it also times the
head and loss alone on the same supervised positions: both modes must compute exactly that, so per_turn's
epoch divided by it bounds how much faster than per_turn any exact implementation can be on this model.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from corpus import ASSETS, TOKENIZER, require_assets


def run_mode(mode, n_dialogues, batch_size, max_length, head):
    import resource

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from psydt_lora.data.dialogues import read_dialogues
    from psydt_lora.data.packing import SampleCollator
    from psydt_lora.data.sample_types import IGNORE_INDEX
    from psydt_lora.data.samples import build_training_samples
    from psydt_lora.train.loss import batch_loss

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    dialogues, _ = read_dialogues(ASSETS / "psydt-shaped" / "train.json", limit=n_dialogues)
    samples, stats = build_training_samples(dialogues, tok, max_length, mode)
    # the real head's width (config.json: 151,936 outputs; the tokenizer itself knows 151,669 tokens), as peers.py
    vocab = json.loads((TOKENIZER / "config.json").read_text("utf-8"))["vocab_size"]
    config = Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192)
    model = get_peft_model(Qwen3ForCausalLM(config), LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    collate = SampleCollator(tok.pad_token_id)
    feats = [s.features() for s in samples]
    counts = []  # supervised tokens of each batch
    start = time.perf_counter()
    for i in range(0, len(feats), batch_size):
        batch = collate(feats[i:i + batch_size])
        counts.append(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()))
        batch_loss(model, batch, counts[-1], head).backward()
        opt.step()
        opt.zero_grad()
    wall = time.perf_counter() - start
    return {"head_seconds": head_alone(model, counts) if head == "fused" else None, **{
        "mode": f"{mode} ({head})", "sequences": len(samples), "tokens": stats.tokens, "supervised": stats.supervised_tokens,
        "padding_share": collate.padding_share(), "seconds": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }}


def head_alone(model, counts):
    """Seconds training's loss (the fused LM head, `loss.SupervisedLoss`) alone takes, forward and backward,
    on as many supervised positions per batch as the epoch had (random hidden states of the model's
    width): what any exact implementation must spend."""
    from types import SimpleNamespace

    import torch

    from psydt_lora.train.loss import SupervisedLoss, fused_head

    head = fused_head(model)
    start = time.perf_counter()
    for n in counts:
        states = torch.randn(1, n, head.weight.shape[1], requires_grad=True)
        labels = torch.randint(0, head.weight.shape[0], (1, n + 1))  # every next token supervised
        SupervisedLoss(head)(SimpleNamespace(logits=states), labels).backward()
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dialogues", type=int, default=6)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--max_length", type=int, default=2048)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--head", default="fused", help=argparse.SUPPRESS)
    p.add_argument("--heads", default="full,kept,fused", help="LM head algorithms to run (the first is the baseline)")
    args = p.parse_args()
    require_assets()
    if args.one:
        print(json.dumps(run_mode(args.one, args.dialogues, args.batch_size, args.max_length, args.head)))
        return
    rows = []
    # the baseline first: per_turn with logits everywhere (how training computed the loss at first)
    heads = args.heads.split(",")
    runs = [(mode, head) for head in heads for mode in ("per_turn", "shared_prefix")] + [("dialogue", heads[-1])]
    for mode, head in runs:
        out = subprocess.run([sys.executable, __file__, "--one", mode, "--dialogues", str(args.dialogues),
                              "--batch_size", str(args.batch_size), "--max_length", str(args.max_length)]
                             + ["--head", head],
                             capture_output=True, text=True, cwd=Path(__file__).parent, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"{args.dialogues} dialogues of psydt-shaped, batch size {args.batch_size}, CPU, 2-layer Qwen3 with the real vocabulary")
    print(f"{'mode':<26}{'seqs':>6}{'tokens':>9}{'superv.':>9}{'padding':>9}{'seconds':>9}{'sup tok/s':>11}{'peak MiB':>10}{'tokens ratio':>14}{'sup tok/s ratio':>17}")
    for r in rows:
        rate = r["supervised"] / r["seconds"]
        print(f"{r['mode']:<26}{r['sequences']:>6}{r['tokens']:>9,}{r['supervised']:>9,}{100 * r['padding_share']:>8.1f}%"
              f"{r['seconds']:>9.1f}{rate:>11.1f}{r['peak_rss_mib']:>10.0f}{base['tokens'] / r['tokens']:>13.2f}x"
              f"{rate / (base['supervised'] / base['seconds']):>16.2f}x")
    head = {r["mode"]: r["head_seconds"] for r in rows if r["head_seconds"]}
    print("LM head + loss alone (fused, same supervised positions, random states): "
          + ", ".join(f"{m} {h:.1f} s" for m, h in head.items()))
    pt = next((r for r in rows if r["mode"] == "per_turn (fused)"), None)
    if pt and head:
        print(f"so no exact implementation can train shared_prefix more than {pt['seconds'] / min(head.values()):.2f}x "
              f"faster than per_turn here (per_turn's whole epoch / the fastest head alone, which every mode must compute)")
    print("shared_prefix trains exactly per_turn's objective; dialogue mode trains a different one (see README).")
    print("(full): the LM head on every position, as at first; (kept): logits only where the loss is, through cross_entropy;")
    print("(fused): as training does now -- only where the loss is, the head applied by the chunked linear_cross_entropy.")


if __name__ == "__main__":
    main()
