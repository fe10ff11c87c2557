"""One side of bench/peers.py --dpo: one DPO epoch on counselling pairs, by this project or by TRL's DPOTrainer.

    python bench/peer_dpo.py --side ours|trl --model DIR --out DIR [--pairs 24]

The pairs: real multi-turn contexts from ../shared/assets/psydt-shaped (a dialogue up to its last counsellor
reply), the real reply chosen against another dialogue's reply at the same turn. Both sides get the same
rendered prompts (this project's renderer: the inference prompt, thinking off) and the same settings
(bench/peers.py's COMMON: LoRA r8/a32 on the 7 projections, batch 1 pair, accumulation 4, fp32 CPU, sigmoid,
beta 0.1, reference = the base with the adapter disabled, dropout off as both do). Prints one JSON line:
train_runtime (the Trainer's), reference_seconds (this project computes the reference once, before training;
TRL computes it inside every step), tokens (what one epoch's policy forward processes), peak_rss_mb.
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

from corpus import ASSETS, ROOT

sys.path.insert(0, str(ROOT / "LLM_fine_turning"))


def counselling_pairs(n: int):
    from psydt_lora.data.pairs import Preference

    shaped = json.loads((ASSETS / "psydt-shaped" / "train.json").read_text("utf-8"))
    multi = [d["messages"] for d in shaped if len(d["messages"]) >= 7]
    out = []
    for i in range(n):
        msgs = multi[i % len(multi)]
        other = multi[(i + 7) % len(multi)]
        last = max(j for j, m in enumerate(msgs) if m["role"] == "assistant")
        replies = [m["content"] for m in other if m["role"] == "assistant"]
        turn = sum(m["role"] == "assistant" for m in msgs[:last])
        out.append(Preference(tuple(msgs[:last]), msgs[last]["content"], replies[min(turn, len(replies) - 1)],
                              f"bench#{i}", {}))
    return out


def lora(c, modules):
    from peft import LoraConfig

    return LoraConfig(r=c["lora_r"], lora_alpha=c["lora_alpha"], lora_dropout=c["lora_dropout"], task_type="CAUSAL_LM",
                      target_modules=modules.split(","))


def ours(args, c, tok, prefs):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    from psydt_lora.data.preference_samples import PreferenceDataset, build_preference_samples
    from psydt_lora.train.preference import PreferenceConfig, make_preference_trainer, reference_logps

    trees, stats = build_preference_samples(prefs, tok, c["max_length"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32), lora(c, args.target_modules))
    start = time.perf_counter()
    ref = reference_logps(model, trees, tok.pad_token_id, "base", batch_size=1)
    ref_seconds = time.perf_counter() - start
    targs = TrainingArguments(output_dir=args.out, per_device_train_batch_size=c["batch"],
                              gradient_accumulation_steps=c["accumulation"], num_train_epochs=1, learning_rate=c["lr"],
                              save_strategy="no", report_to="none", logging_steps=1000, seed=c["seed"], use_cpu=True,
                              logging_first_step=True, remove_unused_columns=False, dataloader_num_workers=0)
    trainer, _ = make_preference_trainer(model, tok, targs, PreferenceConfig(), PreferenceDataset(trees, ref))
    result = trainer.train()
    first = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    return {"train_runtime": result.metrics["train_runtime"], "reference_seconds": ref_seconds, "tokens": stats.tokens,
            "two_row_tokens": stats.two_row_tokens, "pairs": stats.pairs, "first_loss": first,
            "truncated": stats.truncated_history_prompts + stats.truncated_reply_leaves}


def trl(args, c, tok, prefs):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from psydt_lora.data.preference_samples import with_system
    from psydt_lora.prompt import DEFAULT_SYSTEM, render_prompt

    data = Dataset.from_list([{"prompt": render_prompt(tok, with_system(p.messages, DEFAULT_SYSTEM)),
                               "chosen": p.chosen, "rejected": p.rejected} for p in prefs])
    config = DPOConfig(output_dir=args.out, per_device_train_batch_size=c["batch"], beta=0.1, loss_type="sigmoid",
                       gradient_accumulation_steps=c["accumulation"], num_train_epochs=1, learning_rate=c["lr"],
                       max_length=c["max_length"], save_strategy="no", report_to="none", logging_steps=1000,
                       logging_first_step=True,
                       seed=c["seed"], use_cpu=True, gradient_checkpointing=False, dataloader_num_workers=0,
                       include_num_input_tokens_seen="non_padding")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tok,
                         peft_config=lora(c, args.target_modules))
    result = trainer.train()
    first = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    return {"train_runtime": result.metrics["train_runtime"], "reference_seconds": 0.0,
            "tokens": trainer.state.num_input_tokens_seen, "pairs": len(prefs), "first_loss": first}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--side", choices=("ours", "trl"), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", type=int, default=24)
    p.add_argument("--config", required=True, help="JSON of bench/peers.py's COMMON settings")
    p.add_argument("--target_modules", required=True)
    args = p.parse_args()
    from transformers import AutoTokenizer

    c = json.loads(args.config)
    tok = AutoTokenizer.from_pretrained(args.model)
    prefs = counselling_pairs(args.pairs)
    result = (ours if args.side == "ours" else trl)(args, c, tok, prefs)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
