"""`--save_merged DIR [--export gguf,ollama]`: the steps of an export, in order, each saying what it wrote."""
from pathlib import Path

FORMATS = ("gguf", "ollama")


def parse_formats(text) -> list[str]:
    from psydt_lora.errors import PsyDTError

    formats = [f.strip().lower() for f in (text or "").split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise PsyDTError(f"--export 不认识 {', '.join(unknown)}；可选：{', '.join(FORMATS)}（逗号分隔）。")
    if "ollama" in formats and "gguf" not in formats:
        formats.insert(0, "gguf")  # the Modelfile points at a GGUF file
    return formats


def run_export(args, model, tokenizer, record, system_prompt, settings) -> int:
    """Merged folder (+ GGUF files, Modelfile), then the commands that serve them."""
    from psydt_lora.export.card import model_card
    from psydt_lora.export.merged import save_merged
    from psydt_lora.export.recipes import print_recipes, vllm_recipes

    merged = Path(args.save_merged)
    rank = record.setting("lora_r") if record else None
    recipes = vllm_recipes(merged, args.model_path, args.adapter_path, rank)
    card = model_card(record, base=str(args.model_path), adapter=str(args.adapter_path), system_prompt=system_prompt,
                      settings=settings, recipes=recipes)
    save_merged(model, tokenizer, merged, system_prompt=system_prompt, settings=settings, card=card)
    print(f"[合并] 已把 {args.adapter_path} 合并进 {args.model_path}，保存到 {merged}（safetensors + 默认关闭思考的 "
          f"chat template + generation_config.json + 模型卡 README.md）")
    formats = parse_formats(getattr(args, "export", None))
    if formats:
        recipes += export_gguf(args, merged, system_prompt, settings, "ollama" in formats)
    print_recipes(recipes)
    return 0


def export_gguf(args, merged: Path, system_prompt, settings, with_modelfile: bool) -> list[str]:
    from psydt_lora.export import gguf
    from psydt_lora.export.modelfile import write_modelfile
    from psydt_lora.export.recipes import gguf_recipes

    out_dir = gguf.output_dir(merged)
    tools = gguf.converters(args.llama_cpp)
    full = [gguf.convert_model(tools, merged, out_dir, t) for t in gguf.parse_types(args.gguf_types)]
    lora = gguf.convert_lora(tools, args.adapter_path, args.model_path, out_dir)
    modelfile = None
    if with_modelfile:
        modelfile = write_modelfile(out_dir, full[-1].name, system_prompt, merged)
        print(f"[导出] Ollama Modelfile：{modelfile}")
    return gguf_recipes(out_dir, [f.name for f in full], lora.name, modelfile, tools / gguf.CONVERT_FULL)
