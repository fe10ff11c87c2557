"""Fine-tune Qwen3 with LoRA on PsyDTCorpus (multi-turn Chinese counselling dialogues).

    # the whole job: fetch Qwen/Qwen3-1.7B and PsyDTCorpus via ModelScope when missing, train, save
    python LLM_fine_turning/train_psydt_lora.py

    # look at the data first: tokenise, print statistics, write every sample, load no weights
    python LLM_fine_turning/train_psydt_lora.py --dry_run --dump_samples samples.jsonl

    # all 4,760 dialogues, no eval, no SwanLab
    python LLM_fine_turning/train_psydt_lora.py --max_train_items 0 --no-do_eval --report_to none

The adapter lands in <output_dir>/lora_adapter; talk to it with inference_psydt_lora.py.
Run again with the same command after an interruption and it resumes from the last checkpoint.

Installed, the same command is `psydt-train` (the code lives in psydt_lora/train_cli.py).
"""
import sys

from psydt_lora.train_cli import build_parser, cli, config_from_args, main  # noqa: F401  (for scripting and tests)

if __name__ == "__main__":
    sys.exit(cli())
