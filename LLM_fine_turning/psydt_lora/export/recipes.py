"""How to serve what an export wrote: the commands printed at the end of an export and put in the
model card (the README's export section lists the same ones)."""
from pathlib import Path


VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for --max-lora-rank


def max_lora_rank(r) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds an adapter of rank `r`."""
    r = int(r or 8)
    return next((v for v in VLLM_LORA_RANKS if v >= r), r)


def vllm_recipes(merged_dir, base_dir, adapter_dir, lora_rank) -> list[str]:
    rank = max_lora_rank(lora_rank)
    lines = [
        "# vLLM，合并后的模型（思考模式默认关闭、默认系统提示词都已写进 chat template）：",
        f"vllm serve {merged_dir} --served-model-name psydt --host 127.0.0.1 --port 8001",
    ]
    if adapter_dir:
        lines += [
            "# vLLM，基础模型 + adapter（不合并；同一个基础模型可以挂多个 adapter，请求里用 model 字段选）：",
            f"vllm serve {base_dir} --enable-lora --max-lora-rank {rank} --host 127.0.0.1 --port 8001 \\",
            f"    --lora-modules psydt={adapter_dir}  # 更多：psydt-v2=./output/另一个/lora_adapter",
            "#   注意：这种方式用的是基础模型的 chat template（默认会思考）：请求里加",
            "#   \"chat_template_kwargs\": {\"enable_thinking\": false}，或者用本项目的 --mode serve --backend openai 做网关。",
        ]
    return lines


def gguf_recipes(gguf_dir, full_files, lora_file, modelfile, base_dir, converter="convert_hf_to_gguf.py") -> list[str]:
    """`base_dir`: the base model folder the adapter was merged into (the LoRA GGUF is applied to its GGUF)."""
    lines = []
    if full_files:
        main = Path(gguf_dir) / full_files[-1]
        lines += [
            "# llama.cpp（--jinja 使用 GGUF 里带的 chat template，思考默认关闭）：",
            f"llama-server -m {main} --jinja --host 127.0.0.1 --port 8080",
            f"llama-cli -m {main} --jinja -cnv",
        ]
    if lora_file:
        base_gguf = f"{Path(base_dir).resolve().name}-f16.gguf"
        lines += ["# llama.cpp，基础模型的 GGUF + LoRA GGUF（不合并；基础模型先转换一次，--lora 可以给多个）：",
                  f"python {converter} {base_dir} --outtype f16 --outfile {base_gguf}",
                  f"llama-server -m {base_gguf} --lora {Path(gguf_dir) / lora_file} --jinja --host 127.0.0.1 --port 8080"]
    if modelfile:
        lines += ["# Ollama：", f"cd {gguf_dir} && ollama create psydt -f {Path(modelfile).name} && ollama run psydt"]
    return lines


def print_recipes(lines) -> None:
    print("[服务] 可以这样部署导出的模型：")
    for line in lines:
        print(f"  {line}")
