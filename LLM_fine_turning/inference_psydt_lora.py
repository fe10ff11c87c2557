"""Talk to Qwen3 + the PsyDTCorpus LoRA adapter, or test it on the PsyDTCorpus test split.

    # chat in the terminal (streaming; /help lists the commands)
    python LLM_fine_turning/inference_psydt_lora.py

    # batch test on 50 items spread over the test dialogues, greedy, 8 at a time
    python LLM_fine_turning/inference_psydt_lora.py --mode test --max_test_items 50 --no-do_sample --batch_size 8

    # your own questions, each as a fresh conversation
    python LLM_fine_turning/inference_psydt_lora.py --mode test --questions_file questions.txt

    # merge the adapter into the base model and save a standalone model
    python LLM_fine_turning/inference_psydt_lora.py --save_merged ./output/qwen3-1_7b-psydt-merged

Installed, the same command is `psydt-chat` (the code lives in psydt_lora/infer_cli.py).
"""
import sys

from psydt_lora.infer_cli import build_parser, cli, main  # noqa: F401  (main and build_parser: for scripting and tests)

if __name__ == "__main__":
    sys.exit(cli())
