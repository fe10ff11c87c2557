"""An Ollama Modelfile for the exported GGUF whose TEMPLATE renders the training prompt.

Ollama renders a Go text/template over the conversation (`.Messages`, each with `.Role` and
`.Content`); the Modelfile's SYSTEM becomes the first message when a request has no system message of
its own. Qwen3's layout is ChatML, so every message is `<|im_start|>role\\ncontent<|im_end|>\\n`, and the
generation prompt is the one training used, empty think block included (taken from the tokenizer).
tests/test_export.py renders this template with Go's text/template, the way Ollama calls it, and
compares it with the training prompt.
"""
import json
import unicodedata
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.files import atomic_write_text
from psydt_lora.prompt import generation_prompt, render_prompt


MODELFILE = "Modelfile"
PROBE = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
         {"role": "user", "content": "v"}]


def chatml(messages) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def go_template(tokenizer) -> str:
    """The TEMPLATE text; refuses a chat template that is not ChatML (the Go template would not match it)."""
    suffix = generation_prompt(tokenizer)
    if render_prompt(tokenizer, PROBE) != chatml(PROBE) + suffix:
        raise PsyDTError("这个模型的 chat template 不是 Qwen3 的 ChatML 格式，无法生成对应的 Ollama TEMPLATE；"
                         "请用 llama.cpp 的 --jinja（GGUF 里带着原模板）。")
    return "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}" + suffix


def triple_quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise PsyDTError(f"{what}里有 \"\"\"，Ollama 的 Modelfile 无法表示；请换掉这三个引号。")
    return f'"""{text}"""'


def ollama_drops(text: str) -> set:
    """Characters Ollama's Modelfile parser silently drops: not whitespace, and not printable to Go
    (strconv.IsPrint: letters, marks, numbers, punctuation, symbols)."""
    return {c for c in text if c not in " \t\r\n" and unicodedata.category(c)[0] not in "LMNPS"}


def modelfile_text(gguf_name: str, template: str, system_prompt, generation: dict, stops) -> str:
    lines = ["# PsyDT-LoRA：Qwen3 + PsyDTCorpus LoRA 合并后转换的 GGUF。",
             f"# 用法：ollama create psydt -f {MODELFILE} && ollama run psydt",
             "# 回复不能替代专业心理咨询；危机中请拨打 12356（全国统一心理援助热线）或 110 / 120。",
             f"FROM ./{gguf_name}", f"TEMPLATE {triple_quoted(template, 'TEMPLATE ')}"]
    if system_prompt:
        dropped = ollama_drops(system_prompt)
        if dropped:
            print(f"[警告] 系统提示词里的 {sorted(map(ascii, dropped))} 会被 Ollama 读取 Modelfile 时丢掉，"
                  "Ollama 里的系统提示词会和训练时略有不同。")
        lines.append(f"SYSTEM {triple_quoted(system_prompt, '系统提示词')}")
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops]
    names = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repeat_penalty",
             "max_new_tokens": "num_predict"}
    lines += [f"PARAMETER {names[k]} {generation[k]}" for k in names if generation.get(k) is not None]
    lines.append("PARAMETER num_ctx 8192")  # Ollama's default window is smaller than a long counselling session
    return "\n".join(lines) + "\n"


def write_modelfile(out_dir, gguf_name: str, system_prompt, merged) -> Path:
    """Modelfile beside the GGUF, from the merged folder's tokenizer and generation_config.json."""
    from transformers import AutoTokenizer


    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    generation = json.loads((Path(merged) / "generation_config.json").read_text("utf-8"))
    if not generation.get("do_sample", True):
        generation = {**generation, "temperature": 0, "top_p": None, "top_k": None}
    eos = generation.get("eos_token_id")
    stops = tokenizer.convert_ids_to_tokens(eos if isinstance(eos, list) else [eos])
    path = Path(out_dir) / MODELFILE
    atomic_write_text(path, modelfile_text(gguf_name, go_template(tokenizer), system_prompt, generation, stops))
    return path
