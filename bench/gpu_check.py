"""Benchmark 3: per_turn vs shared_prefix on one GPU at the real Qwen3-1.7B shape (random weights).

    python bench/gpu_check.py                      # H100/H200: ~6-8 minutes (estimated), nothing to download
    python bench/gpu_check.py --tiny --steps 2     # a smoke test on CPU

Needs the real Qwen3 tokenizer + config and the PsyDTCorpus-shaped data: ../shared/assets by default,
or --assets DIR with qwen3-tokenizer/, psydt-sample/, psydt-shaped/. Builds Qwen3-1.7B from config.json
with random weights (bf16), LoRA r=8 on all linear layers, activation checkpointing, and trains a few
optimizer steps for each sample length (2,048 and 8,192), attention kernel (sdpa, flex_attention), way of
applying the LM head (fused: training's chunked linear_cross_entropy; --heads fused,kept adds logits then
cross_entropy)
and sample mode (per_turn, shared_prefix, and shared_prefix with --packing: several dialogues' packs a
row). Prints tokens/s, supervised tokens/s, MFU and peak memory. Then a DPO step at the same shape
(--dpo_steps; pairs as shared-prefix trees, reference once): pairs/s and peak memory.

FLOPs are counted honestly per processed token: every matmul forward (2 x params), its recomputation
under activation checkpointing (decoder layers only), the backward pass for activations (2 x params;
frozen base weights get no weight gradient) and LoRA's weight gradients, plus attention scores and
values over exactly the key positions the mask allows (forward, recompute, backward = 2x forward).
MFU divides by --peak_tflops (989 for H100/H200 SXM dense bf16).
"""
import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def flops_per_batch(cfg, batch, lora_r, recompute=True):
    """Model FLOPs of one training step on `batch` (see module docstring)."""
    d, f, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    hd, nq, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    per_layer = d * nq * hd + 2 * d * nkv * hd + nq * hd * d + 3 * d * f  # q,k,v,o + gate,up,down
    lora_per_layer = lora_r * ((d + nq * hd) + 2 * (d + nkv * hd) + (nq * hd + d) + 2 * (d + f) + (f + d))
    mask = batch["attention_mask"]
    tokens = int(batch["input_ids"].numel())
    if mask.dim() == 4:
        keys = int(mask.sum())  # allowed (query, key) pairs
        real = int(mask.any(-1).sum())
    else:
        lengths = mask.sum(-1)
        keys = int((lengths * (lengths + 1) // 2).sum())
        real = int(lengths.sum())
    tokens = real
    layers_fwd = 2 * (per_layer + lora_per_layer) * tokens * L
    attn_fwd = 2 * 2 * nq * hd * keys * L  # QK^T and AV
    head_fwd = 2 * d * V * int(batch["logits_to_keep"].numel()) * batch["input_ids"].shape[0]  # kept positions only
    fwd = layers_fwd + attn_fwd + head_fwd
    recompute_cost = (layers_fwd + attn_fwd) if recompute else 0
    bwd = 2 * per_layer * tokens * L + 2 * 2 * lora_per_layer * tokens * L + 2 * attn_fwd + 2 * head_fwd
    return fwd + recompute_cost + bwd


def lora_model(cfg, attn: str, device: str):
    """Qwen3 at `cfg` (random weights) with LoRA r=8 on the 7 projections, as training builds it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3ForCausalLM

    cfg._attn_implementation = attn
    model = Qwen3ForCausalLM(cfg).to(device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))


def rows_for(samples, mode: str, length: int) -> list[dict]:
    """The collator's inputs: one sample a row, or with "+packing" several a row up to the pack length."""
    from psydt_lora.data.packing import fill_rows, merge_features, resolve_pack_length

    feats = [s.features() for s in samples]
    if not mode.endswith("+packing"):
        return feats
    rows = fill_rows([len(f["input_ids"]) for f in feats], resolve_pack_length(None, length))
    return [merge_features([feats[i] for i in r]) for r in rows]


def count(chunks, cfg, batch_size: int) -> tuple[int, int, int]:
    """(FLOPs, tokens, supervised tokens) of the timed steps, on the dense mask (before the clock starts)."""
    from psydt_lora.data.packing import IGNORE_INDEX, SampleCollator

    counted = SampleCollator(0, pad_to_multiple_of=8)
    flops = tokens = supervised = 0
    for chunk in chunks:
        for i in range(0, len(chunk), batch_size):
            dense = counted(chunk[i:i + batch_size])
            flops += flops_per_batch(cfg, dense, 8)
            mask = dense["attention_mask"]
            tokens += int(mask.any(-1).sum()) if mask.dim() == 4 else int(mask.sum())
            supervised += int((dense["labels"][:, 1:] != IGNORE_INDEX).sum())
    return flops, tokens, supervised


def timed_steps(model, chunks, collate, warmup: int, batch_size: int, head: str, device: str) -> float:
    """Seconds for the optimizer steps after `warmup`, each over one chunk of rows, as training computes them."""
    import torch

    from psydt_lora.train.loss import batch_loss
    from psydt_lora.data.packing import IGNORE_INDEX

    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    t0 = None
    for step, chunk in enumerate(chunks):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        micro = [collate(chunk[i:i + batch_size]) for i in range(0, len(chunk), batch_size)]
        n = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
        for b in micro:
            b = {k: v.to(device) for k, v in b.items()}
            batch_loss(model, b, n, head).backward()  # as training: logits at supervised positions only
        opt.step()
        opt.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def dpo_check(cfg, tok, dialogues, args, device) -> None:
    """A DPO step at this shape: pairs (a dialogue up to its last reply; that reply against another dialogue's)
    as shared-prefix trees, the reference once (adapter disabled), then --dpo_steps optimizer steps of
    --grad_accum trees each, sdpa, the fused head. Prints pairs/s, tokens/s and peak memory."""
    import torch

    from psydt_lora.data.pairs import Preference
    from psydt_lora.data.preference_samples import PreferenceCollator, PreferenceDataset, build_preference_samples
    from psydt_lora.train.preference import PreferenceConfig, batch_preference_loss, reference_logps

    n = args.grad_accum * (args.warmup + args.dpo_steps)
    prefs = [Preference(tuple(d.messages[:-1]), d.messages[-1]["content"],
                        dialogues[(i + 1) % len(dialogues)].messages[-1]["content"], f"gpu#{i}", {})
             for i, d in enumerate(dialogues[:n])]
    trees, stats = build_preference_samples(prefs, tok, 2048)
    torch.manual_seed(0)
    model = lora_model(cfg, "sdpa", device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    data = PreferenceDataset(trees, reference_logps(model, trees, tok.pad_token_id, "base", batch_size=1))
    ref_seconds = time.perf_counter() - start
    collate, config = PreferenceCollator(tok.pad_token_id, pad_to_multiple_of=8), PreferenceConfig()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    for step in range(args.warmup + args.dpo_steps):
        if step == args.warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        for i in range(step * args.grad_accum, (step + 1) * args.grad_accum):
            batch = {k: v.to(device) for k, v in collate([data[i]]).items()}
            (batch_preference_loss(model, batch, config)[0] / args.grad_accum).backward()
        opt.step()
        opt.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    timed = trees[args.warmup * args.grad_accum:]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    print(f"[DPO 2048 / sdpa / fused] {len(timed) / secs:.2f} pairs/s, {sum(len(t.input_ids) for t in timed) / secs:,.0f} "
          f"tree tokens/s, reference pass {ref_seconds:.1f} s for {len(trees)} pairs, peak {peak:.1f} GiB; "
          f"{stats.as_dict()['tokens_per_pair']} tokens a "
          f"pair (two rows: {stats.as_dict()['two_row_tokens_per_pair']})", flush=True)


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--assets", default=str(HERE.parent.parent / "shared" / "assets"))
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--grad_accum", type=int, default=4)
    p.add_argument("--max_lengths", default="2048,8192", help="sample lengths to measure (comma-separated)")
    p.add_argument("--attn", default="sdpa,flex_attention", help="attention kernels to try")
    p.add_argument("--heads", default="fused", help="how the LM head is applied: fused (training's chunked "
                                                          "linear_cross_entropy) and/or kept (logits, then cross_entropy)")
    p.add_argument("--modes", default="per_turn,shared_prefix,shared_prefix+packing",
                   help="sample modes; '+packing': several samples a row up to the pack length (--packing)")
    p.add_argument("--peak_tflops", type=float, default=989.0)
    p.add_argument("--tiny", action="store_true", help="2 small layers on CPU, to check the script runs")
    p.add_argument("--dpo_steps", type=int, default=4, help="timed DPO optimizer steps at 2,048 (0: none)")
    return p.parse_args()


def main():
    args = parse_args()
    import torch
    from transformers import AutoTokenizer, Qwen3Config

    import corpus
    from psydt_lora.data.packing import SampleCollator
    from psydt_lora.data.samples import build_training_samples

    assets = Path(args.assets)
    corpus.ASSETS, corpus.TOKENIZER = assets, assets / "qwen3-tokenizer"
    tok = AutoTokenizer.from_pretrained(str(assets / "qwen3-tokenizer"))
    cfg_dict = json.loads((assets / "qwen3-tokenizer" / "config.json").read_text())
    cfg = Qwen3Config(**{k: v for k, v in cfg_dict.items() if k not in ("architectures", "transformers_version")})
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.layer_types = 2, 64, 128, ["full_attention"] * 2
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 2, 16
    dialogues = corpus.build(400 if not args.tiny else 12)
    print(f"device {device}; corpus: {corpus.describe(dialogues)}")
    results = []
    modes = args.modes.split(",")
    runs = [(length, attn, head, mode) for length in map(int, args.max_lengths.split(",")) for attn in args.attn.split(",")
            for head in args.heads.split(",") for mode in modes]
    built = {}
    for length, attn, head, mode in runs:
        torch.manual_seed(0)
        base_mode = mode.removesuffix("+packing")
        if (length, base_mode) not in built:
            built[(length, base_mode)] = build_training_samples(dialogues, tok, length, base_mode)
        samples, stats = built[(length, base_mode)]
        model = None
        try:
            model = lora_model(cfg, attn, device)
            rows = rows_for(samples, mode, length)
            per_step = args.batch_size * args.grad_accum
            chunks = [rows[(step * per_step) % len(rows):][:per_step] for step in range(args.warmup + args.steps)]
            flops, tokens, supervised = count(chunks[args.warmup:], cfg, args.batch_size)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            collate = SampleCollator(tok.pad_token_id, pad_to_multiple_of=8, block_mask=attn == "flex_attention")
            secs = timed_steps(model, chunks, collate, args.warmup, args.batch_size, head, device)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            results.append((length, attn, head, mode, tokens / secs, supervised / secs,
                            flops / secs / 1e12 / args.peak_tflops, peak, stats.tokens / stats.supervised_tokens))
            print(f"[{length} / {attn} / {head} / {mode}] {supervised / secs:,.0f} supervised tokens/s, peak {peak:.1f} GiB", flush=True)
        except Exception as err:  # e.g. a kernel that does not take these masks, or out of memory
            print(f"[{length} / {attn} / {head} / {mode}] failed: {type(err).__name__}: {str(err)[:200]}", flush=True)
        finally:
            model = None
            if device == "cuda":
                torch.cuda.empty_cache()
    print_results(results, runs)
    if args.dpo_steps:
        dpo_check(cfg, tok, dialogues, args, device)


def print_results(results, runs):
    print(f"{'length':>7} {'attention':<16}{'head':<7}{'mode':<23}{'tokens/s':>11}{'superv. tok/s':>15}{'MFU':>8}"
          f"{'peak GiB':>10}{'tokens per superv.':>20}")
    for length, attn, head, mode, tps, sps, mfu, peak, ratio in results:
        print(f"{length:>7} {attn:<16}{head:<7}{mode:<23}{tps:>11,.0f}{sps:>15,.0f}{100 * mfu:>7.1f}%{peak:>10.1f}{ratio:>20.1f}")
    by = {r[:4]: r[5] for r in results}
    for length, attn, head, mode in runs:
        if mode != "per_turn" and (length, attn, head, "per_turn") in by and (length, attn, head, mode) in by:
            print(f"{length} / {attn} / {head}: {mode} trains "
                  f"{by[(length, attn, head, mode)] / by[(length, attn, head, 'per_turn')]:.2f}x per_turn's supervised tokens per second")


if __name__ == "__main__":
    main()
