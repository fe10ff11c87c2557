"""`export --save_merged DIR [--export gguf,ollama]`: the steps of an export, in order, each saying what it wrote."""
from dataclasses import dataclass
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.export import gguf
from psydt_lora.export.card import model_card
from psydt_lora.export.merged import save_merged
from psydt_lora.export.modelfile import write_modelfile
from psydt_lora.export.recipes import gguf_recipes, print_recipes, vllm_recipes

FORMATS = ("gguf", "ollama")


@dataclass(frozen=True)
class ExportConfig:
    """What the export writes: the merged folder, and the extra formats beside it."""
    output_dir: str  # --save_merged DIR
    formats: tuple = ()  # --export, parsed (ollama brings gguf)
    gguf_types: str = "f16,q8_0"
    llama_cpp: str | None = None  # llama.cpp's source folder; None: the converters from PyPI


def parse_formats(text) -> list[str]:
    formats = [f.strip().lower() for f in (text or "").split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise PsyDTError(f"--export 不认识 {', '.join(unknown)}；可选：{', '.join(FORMATS)}（逗号分隔）。")
    if "ollama" in formats and "gguf" not in formats:
        formats.insert(0, "gguf")  # the Modelfile points at a GGUF file
    return formats


def lora_rank(record) -> int | None:
    """The adapter's LoRA rank from its run record, either format (the typed lora.r; format 1's lora_r flag)."""
    if record is None:
        return None
    lora = record.settings.get("lora")
    return lora.get("r") if isinstance(lora, dict) and "r" in lora else record.setting("lora_r")


def run_export(config: ExportConfig, model, tokenizer, record, base: str, adapter: str, system_prompt, settings) -> int:
    """Merged folder (+ GGUF files, Modelfile), then the commands that serve them. `base` and `adapter` are the
    folders the merged model came from."""
    merged = Path(config.output_dir)
    rank = lora_rank(record)
    recipes = vllm_recipes(merged, base, adapter, rank)
    card = model_card(record, base=str(base), adapter=str(adapter), system_prompt=system_prompt,
                      settings=settings, recipes=recipes)
    save_merged(model, tokenizer, merged, system_prompt=system_prompt, settings=settings, card=card)
    print(f"[合并] 已把 {adapter} 合并进 {base}，保存到 {merged}（safetensors + 默认关闭思考的 "
          f"chat template + generation_config.json + 模型卡 README.md）")
    if config.formats:
        recipes += export_gguf(config, merged, base, adapter, system_prompt, "ollama" in config.formats)
    print_recipes(recipes)
    return 0


def export_gguf(config: ExportConfig, merged: Path, base, adapter, system_prompt, with_modelfile: bool) -> list[str]:
    out_dir = gguf.output_dir(merged)
    tools = gguf.converters(config.llama_cpp)
    full = [gguf.convert_model(tools, merged, out_dir, t) for t in gguf.parse_types(config.gguf_types)]
    lora = gguf.convert_lora(tools, adapter, base, out_dir)
    modelfile = None
    if with_modelfile:
        modelfile = write_modelfile(out_dir, full[-1].name, system_prompt, merged)
        print(f"[导出] Ollama Modelfile：{modelfile}")
    return gguf_recipes(out_dir, [f.name for f in full], lora.name, modelfile, base, tools / gguf.CONVERT_FULL)
