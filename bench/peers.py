"""Benchmark 4: this project next to ms-swift, LLaMA-Factory and TRL, same model, same data, one run.

    python bench/peers.py --swift /tmp/peers/swift/bin/python --llamafactory /tmp/peers/lf/bin/python \
        --trl /tmp/peers/trl/bin/python [--dialogues 48] [--repeats 3]

Each peer lives in its own virtual environment (never a dependency of this project); one line each:

    python3 -m venv /tmp/peers/swift && /tmp/peers/swift/bin/pip install torch==2.13.0 ms-swift==4.6.0
    python3 -m venv /tmp/peers/trl && /tmp/peers/trl/bin/pip install torch==2.13.0 trl==1.16.0 peft
    python3 -m venv /tmp/peers/lf && /tmp/peers/lf/bin/pip install torch==2.13.0 \
        && /tmp/peers/lf/bin/pip install --no-deps llamafactory==0.9.5 && bash bench/peer_lf_fixup.sh /tmp/peers/lf

(LLaMA-Factory 0.9.5 asks for torchvision and torchaudio, which pull a CUDA torch of several GB and fail
beside the CPU one: the fix-up installs the rest of its requirements around the torch that is there and
gives it an empty torchaudio package, imported but never used by a text model.) A peer whose interpreter is not given is left out of the table.

Setting, the same for every tool: a random Qwen3 with the real tokenizer and vocabulary (2 layers,
hidden 64, tied embeddings; written once as safetensors), the psydt-shaped dialogues in the PsyDTCorpus
schema, CPU fp32, batch 1, gradient accumulation 4, LoRA r=8, alpha=32, dropout 0.1 on the 7 projections,
no gradient checkpointing, max length 2048, one epoch, no evaluation, no checkpoints. Runs are
interleaved (every configuration once per round) so a slower minute of the machine hits all of them;
the time is the Trainer's own `train_runtime` (the training loop: no model load, no preprocessing), the
median over the rounds. Ratios are against this project's `shared_prefix` on the same dialogues in the
same run. TRL trains on the first --small_dialogues (12) only -- about 5 minutes for those here --
beside a `shared_prefix` run on those same dialogues, its reference.

With --dpo: one DPO epoch on --dpo_pairs (24) multi-turn counselling pairs, this project (pairs as
shared-prefix trees, the reference computed once before training) against TRL's DPOTrainer (a chosen and a
rejected row per pair, the reference run in every step), same rendered prompts, same model, same settings
(bench/peer_dpo.py); time, tokens, peak memory and the ratio.

    python bench/peers.py --dpo [--repeats 1]

This project also runs with `--packing` (several samples a row up to the pack length, each isolated),
in both exact modes.

What each objective is: this project's `shared_prefix` and `per_turn` (and TRL's prompt-completion
route) train every reply on exactly the prompt the model sees at inference; `dialogue`, ms-swift's
default and LLaMA-Factory's sharegpt route train the whole dialogue as one sequence, so earlier replies
are predicted with the think block the template renders for them (not the inference prompt).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from corpus import ASSETS, ROOT, TOKENIZER, require_assets

HERE = Path(__file__).resolve().parent
COMMON = {"lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.1, "batch": 1, "accumulation": 4, "max_length": 2048,
          "lr": 1e-4, "seed": 42}
PROJECTIONS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def write_model(folder: Path) -> None:
    """A small random Qwen3 with the real tokenizer and vocabulary, as safetensors."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    real = json.loads((TOKENIZER / "config.json").read_text("utf-8"))
    config = Qwen3Config(vocab_size=real["vocab_size"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=40960,
                         tie_word_embeddings=True, bos_token_id=real.get("bos_token_id"), eos_token_id=real["eos_token_id"],
                         rope_theta=real.get("rope_theta", 1000000))
    Qwen3ForCausalLM(config).save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    shutil.copy(TOKENIZER / "generation_config.json", folder / "generation_config.json")


def write_data(folder: Path, n: int) -> Path:
    """The first n psydt-shaped dialogues (PsyDTCorpus schema), plus LLaMA-Factory's dataset_info.json."""
    records = json.loads((ASSETS / "psydt-shaped" / "train.json").read_text("utf-8"))[:n]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.json"
    path.write_text(json.dumps(records, ensure_ascii=False), "utf-8")
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "system_tag": "system"}
    info = {"psydt": {"file_name": "train.json", "formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": tags}}
    (folder / "dataset_info.json").write_text(json.dumps(info), "utf-8")
    return path


# -- one command per configuration ------------------------------------------------------------------
def ours(mode: str, *extra: str):
    def command(model: Path, data: Path, out: Path, python: str):
        return [python, str(ROOT / "LLM_fine_turning" / "train_psydt_lora.py"), *extra, "--model_local_dir", str(model),
                "--train_file", str(data), "--max_train_items", "0", "--no-do_eval", "--sample_mode", mode,
                "--no-sample_cache", "--dtype", "fp32", "--no-gradient_checkpointing", "--num_train_epochs", "1",
                "--per_device_train_batch_size", str(COMMON["batch"]),
                "--gradient_accumulation_steps", str(COMMON["accumulation"]), "--max_length", str(COMMON["max_length"]),
                "--lora_r", str(COMMON["lora_r"]), "--lora_alpha", str(COMMON["lora_alpha"]),
                "--lora_dropout", str(COMMON["lora_dropout"]), "--learning_rate", str(COMMON["lr"]),
                "--save_steps", "100000", "--logging_steps", "1000", "--report_to", "none", "--output_dir", str(out)]

    def runtime(out: Path, stdout: str):
        train = json.loads((out / "metrics.json").read_text("utf-8"))["train"]
        run = json.loads((out / "lora_adapter" / "psydt_run.json").read_text("utf-8"))
        return train["train_runtime"], run["data"]["train"]["tokens"]
    return command, runtime


def swift_command(model: Path, data: Path, out: Path, python: str):
    swift = str(Path(python).parent / "swift")
    return [swift, "sft", "--model", str(model), "--model_type", "qwen3", "--template", "qwen3", "--dataset", str(data), "--tuner_type", "lora",
            "--lora_rank", str(COMMON["lora_r"]), "--lora_alpha", str(COMMON["lora_alpha"]),
            "--lora_dropout", str(COMMON["lora_dropout"]), "--target_modules", "all-linear",
            "--torch_dtype", "float32", "--per_device_train_batch_size", str(COMMON["batch"]),
            "--gradient_accumulation_steps", str(COMMON["accumulation"]), "--num_train_epochs", "1",
            "--max_length", str(COMMON["max_length"]), "--learning_rate", str(COMMON["lr"]),
            "--gradient_checkpointing", "false", "--split_dataset_ratio", "0", "--save_strategy", "no",
            "--report_to", "none", "--logging_steps", "1000", "--dataloader_num_workers", "0",
            "--include_num_input_tokens_seen", "true", "--seed", str(COMMON["seed"]), "--output_dir", str(out)]


def lf_command(model: Path, data: Path, out: Path, python: str):
    config = {"model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "lora_rank": COMMON["lora_r"], "lora_alpha": COMMON["lora_alpha"], "lora_dropout": COMMON["lora_dropout"],
              "lora_target": "all", "dataset": "psydt", "dataset_dir": str(data.parent), "template": "qwen3",
              "cutoff_len": COMMON["max_length"], "packing": True, "neat_packing": True,
              "per_device_train_batch_size": COMMON["batch"], "gradient_accumulation_steps": COMMON["accumulation"],
              "num_train_epochs": 1.0, "learning_rate": COMMON["lr"], "output_dir": str(out), "overwrite_output_dir": True,
              "save_strategy": "no", "report_to": "none", "logging_steps": 1000, "bf16": False, "fp16": False,
              "include_num_input_tokens_seen": True, "seed": COMMON["seed"], "dataloader_num_workers": 0,
              "disable_gradient_checkpointing": True, "preprocessing_num_workers": 1, "use_cpu": True}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "lf.yaml"  # its JSON reader is broken in 0.9.5; JSON scalars are valid YAML
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()), "utf-8")
    return [str(Path(python).parent / "llamafactory-cli"), "train", str(path)]


def trl_command(model: Path, data: Path, out: Path, python: str):
    return [python, str(HERE / "peer_trl.py"), "--model", str(model), "--data", str(data), "--out", str(out),
            "--config", json.dumps(COMMON), "--target_modules", PROJECTIONS]


def runtime_from_log(out: Path, stdout: str):
    """The Trainer's closing log line (every peer prints it): train_runtime and tokens seen."""
    seconds = re.findall(r"['\"]train_runtime['\"]:\s*'?([0-9.]+)", stdout)
    tokens = re.findall(r"['\"](?:train_)?num_input_tokens_seen['\"]:\s*'?([0-9.]+)", stdout)
    if not seconds:
        raise RuntimeError("no train_runtime in the output")
    return float(seconds[-1]), (int(float(tokens[-1])) if tokens else None)


@dataclass
class Config:
    label: str
    objective: str
    python: str  # which interpreter: ours, swift, llamafactory, trl
    command: object
    reader: object
    small: bool = False  # on the first --small_dialogues only (TRL: minutes where the others take seconds)


def configs_for(small: int) -> list:
    sp = ("per-turn exact", "ours", *ours("shared_prefix"))
    return [
        Config("this project, shared_prefix", *sp),
        Config("this project, per_turn", "per-turn exact", "ours", *ours("per_turn")),
        Config("this project, dialogue", "whole dialogue", "ours", *ours("dialogue")),
        Config("this project, shared_prefix --packing", "per-turn exact", "ours", *ours("shared_prefix", "--packing")),
        Config("this project, per_turn --packing", "per-turn exact", "ours", *ours("per_turn", "--packing")),
        Config("ms-swift 4.6, default", "whole dialogue", "swift", swift_command, runtime_from_log),
        Config("LLaMA-Factory 0.9.5, neat_packing", "whole dialogue", "llamafactory", lf_command, runtime_from_log),
        Config(f"this project, shared_prefix ({small} dialogues)", *sp, small=True),
        Config("TRL 1.16, prompt-completion + packing", "per-turn exact", "trl", trl_command, runtime_from_log,
               small=True),
    ]


def run_one(config: Config, model: Path, data: Path, work: Path, python: str, timeout: int) -> dict:
    out = Path(tempfile.mkdtemp(dir=work))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "MODELSCOPE_OFFLINE": "1", "WANDB_DISABLED": "true", "PSYDT_SAFETY_MODEL": "none",
           "USE_HUB": "0", "DISABLE_VERSION_CHECK": "1"}
    start = time.perf_counter()
    proc = subprocess.run(config.command(model, data, out, python), capture_output=True, text=True, env=env,
                          cwd=work, timeout=timeout)
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        (work / f"failed-{len(list(work.glob('failed-*')))}.log").write_text(log, "utf-8")
        print(f"  {config.label}: exit {proc.returncode}; last lines:\n" + "\n".join(log.splitlines()[-15:]), flush=True)
        return {"failed": True}
    seconds, tokens = config.reader(out, log)
    shutil.rmtree(out, ignore_errors=True)
    print(f"  {config.label}: train {seconds:.1f} s, command {wall:.1f} s", flush=True)
    return {"seconds": seconds, "wall": wall, "tokens": tokens}


def dpo_main(args) -> None:
    """--dpo: one DPO epoch by this project (shared-prefix trees, reference once) and by TRL's DPOTrainer
    (two rows a pair, reference every step), same pairs, same model, interleaved rounds (bench/peer_dpo.py)."""
    work = Path(tempfile.mkdtemp(prefix="psydt-peers-dpo-"))
    write_model(work / "model")
    sides = {"this project, DPO on trees": sys.executable, "TRL 1.16 DPOTrainer": args.trl or sys.executable}
    runs = {label: [] for label in sides}
    for r in range(args.repeats):
        for label, python in sides.items():
            side = "ours" if label.startswith("this") else "trl"
            cmd = [python, str(HERE / "peer_dpo.py"), "--side", side, "--model", str(work / "model"), "--out",
                   str(work / side), "--pairs", str(args.dpo_pairs), "--config", json.dumps(COMMON),
                   "--target_modules", PROJECTIONS]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=work,
                                  env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"})
            if proc.returncode != 0:
                print(f"  {label}: exit {proc.returncode}\n" + "\n".join((proc.stdout + proc.stderr).splitlines()[-15:]))
                continue
            runs[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  round {r + 1} {label}: {runs[label][-1]}", flush=True)
    print(f"\n{args.dpo_pairs} multi-turn counselling pairs, CPU fp32, batch 1 pair x accumulation 4, LoRA r8/a32, "
          f"sigmoid beta 0.1, median of {args.repeats}; time = reference pass + train_runtime\n")
    print("| tool | tokens a forward | train time | reference pass | total | ratio | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("train_runtime", "reference_seconds", "tokens",
                                                                  "peak_rss_mb")} for k, v in runs.items() if v}
    ours_total = next((m["train_runtime"] + m["reference_seconds"] for k, m in med.items() if k.startswith("this")), None)
    for label, m in med.items():
        total = m["train_runtime"] + m["reference_seconds"]
        ratio = f"{total / ours_total:.2f}x" if ours_total else "-"
        print(f"| {label} | {int(m['tokens']):,} | {m['train_runtime']:.1f} s | {m['reference_seconds']:.1f} s | "
              f"{total:.1f} s | {ratio} | {m['peak_rss_mb']:.0f} MB |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1), "utf-8")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--swift", help="python of a venv with ms-swift 4.6.0")
    p.add_argument("--llamafactory", help="python of a venv with llamafactory 0.9.5")
    p.add_argument("--trl", help="python of a venv with trl 1.16.0")
    p.add_argument("--dialogues", type=int, default=48)
    p.add_argument("--small_dialogues", type=int, default=12, help="TRL's share (and a shared_prefix run beside it)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default="", help="run the configurations whose label starts with one of these "
                                                "(separated by '|', e.g. 'this project|ms-swift')")
    p.add_argument("--timeout", type=int, default=3600, help="seconds for one configuration")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--dpo", action="store_true", help="DPO instead: this project against TRL's DPOTrainer "
                                                      "(TRL from --trl, else this interpreter's)")
    p.add_argument("--dpo_pairs", type=int, default=24)
    args = p.parse_args()
    require_assets()
    if args.dpo:
        dpo_main(args)
        return
    pythons = {"ours": sys.executable, "swift": args.swift, "llamafactory": args.llamafactory, "trl": args.trl}
    configs = [c for c in configs_for(args.small_dialogues) if pythons[c.python]]
    if not args.trl:  # the small shared_prefix run is TRL's reference
        configs = [c for c in configs if not c.small]
    if args.only:
        configs = [c for c in configs if any(c.label.lower().startswith(w.strip().lower()) for w in args.only.split("|"))]
    work = Path(tempfile.mkdtemp(prefix="psydt-peers-"))
    print(f"work folder {work}; {len(configs)} configurations x {args.repeats} rounds, interleaved", flush=True)
    write_model(work / "model")
    data = {False: write_data(work / "all", args.dialogues), True: write_data(work / "small", args.small_dialogues)}
    results = {c.label: [] for c in configs}
    for r in range(args.repeats):
        print(f"round {r + 1}/{args.repeats}", flush=True)
        for c in configs:
            results[c.label].append(run_one(c, work / "model", data[c.small], work, pythons[c.python], args.timeout))
    print_table(configs, results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), "utf-8")


def print_table(configs, results, args):
    def median(label, key):
        values = [r[key] for r in results[label] if not r.get("failed") and r.get(key) is not None]
        return statistics.median(values) if values else None

    base = {small: next((median(c.label, "seconds") for c in configs if c.small == small and "shared_prefix" in c.label), None)
            for small in (False, True)}
    print(f"\npsydt-shaped dialogues, CPU fp32, batch 1 x accumulation 4, LoRA r8/a32 on 7 projections, "
          f"median train_runtime of {args.repeats} interleaved rounds; ratio = time / this project's shared_prefix "
          f"time on the same dialogues\n")
    print("| tool, mode | objective | dialogues | tokens | train time | ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for c in configs:
        s, t = median(c.label, "seconds"), median(c.label, "tokens")
        ratio = f"{s / base[c.small]:.2f}x" if s and base[c.small] else "-"
        n = args.small_dialogues if c.small else args.dialogues
        print(f"| {c.label} | {c.objective} | {n} | {f'{int(t):,}' if t else '-'} | {f'{s:.1f} s' if s else 'failed'} | {ratio} |")


if __name__ == "__main__":
    main()
