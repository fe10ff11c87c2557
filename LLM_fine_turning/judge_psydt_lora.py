"""Judge the counsellor with an LLM judge: rubric scores, pairwise LoRA vs base, the crisis-response check;
generation and judging through any OpenAI-compatible endpoint (vLLM, SGLang, a hosted API, --mode serve).

    python LLM_fine_turning/judge_psydt_lora.py generate --eval_set cpsycoune --gen_url URL --gen_model psydt
    python LLM_fine_turning/judge_psydt_lora.py rubric --results ./output/psydt_judge/cpsycoune.json \
        --judge_url URL --judge_model NAME

Installed, the same command is `psydt-judge` (the code lives in psydt_lora/judge_cli.py).
"""
import sys

from psydt_lora.judge_cli import build_parser, cli, main  # noqa: F401  (main and build_parser: for scripting and tests)

if __name__ == "__main__":
    sys.exit(cli())
