"""The chat template an exported model ships with: the tokenizer's own template, with the training
defaults put in front of it.

Training renders every context with `enable_thinking=False` (psydt_lora.prompt), and a conversation
starts with the system prompt the data had. Qwen3's own template defaults to thinking *on* and to no
system prompt, so an engine that calls it plainly (vLLM, `apply_chat_template`, llama.cpp's --jinja)
would send a prompt the adapter never saw. The preamble sets both defaults only when the caller
did not choose: `enable_thinking=True` still turns thinking on, and a conversation's own system
message still wins over the learned one.
"""
import json

BEGIN = "{#- psydt-lora: the training defaults -#}"
END = "{#- psydt-lora: the tokenizer's own template follows -#}"


def jinja_string(text: str) -> str:
    """`text` as a Jinja string literal (JSON's escapes are a subset of the ones Jinja reads)."""
    return json.dumps(text, ensure_ascii=False)


def preamble(system_prompt: str | None) -> str:
    lines = [BEGIN, "{%- if enable_thinking is not defined %}{%- set enable_thinking = false %}{%- endif -%}"]
    if system_prompt:
        lines.append(
            "{%- if messages | length == 0 or messages[0].role != 'system' %}"
            "{%- set messages = [{'role': 'system', 'content': " + jinja_string(system_prompt) + "}] + messages %}"
            "{%- endif -%}"
        )
    return "\n".join(lines + [END]) + "\n"


def with_training_defaults(template: str, system_prompt: str | None) -> str:
    """The template whose plain rendering (no keyword arguments) is the training prompt. Applying it to
    a template that already has the preamble replaces the old one."""
    if template.startswith(BEGIN) and END in template:
        template = template.split(END + "\n", 1)[-1]
    return preamble(system_prompt) + template
