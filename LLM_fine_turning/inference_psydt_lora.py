"""Talk to Qwen3 + the PsyDTCorpus LoRA adapter, test it, serve it, export it: five subcommands, each with its
own --help (the code lives in psydt_lora/infer_cli.py; installed, the same command is `psydt-chat`).

    # chat in the terminal (streaming; /help lists the commands)
    python LLM_fine_turning/inference_psydt_lora.py chat

    # batch test on 50 items spread over the test dialogues, greedy, 8 at a time
    python LLM_fine_turning/inference_psydt_lora.py test --max_test_items 50 --no-do_sample --batch_size 8

    # your own questions, each as a fresh conversation
    python LLM_fine_turning/inference_psydt_lora.py test --questions_file questions.txt

    # the OpenAI-compatible API and the chat page
    python LLM_fine_turning/inference_psydt_lora.py serve

    # merge the adapter into the base model and save a standalone model
    python LLM_fine_turning/inference_psydt_lora.py export --save_merged ./output/qwen3-1_7b-psydt-merged

The tutorial's flat form still works the same: no subcommand = chat, `--mode test|serve`, `--save_merged DIR`,
`--safety_eval FILE`.
"""
import sys

from psydt_lora.infer_cli import build_command_parser, build_parser, cli, main  # noqa: F401  (for scripting and tests)

if __name__ == "__main__":
    sys.exit(cli())
