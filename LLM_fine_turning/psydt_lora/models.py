"""Loading the tokenizer, the base model and a LoRA adapter. Safetensors only; no remote code
unless the user asks for it."""
import json
from pathlib import Path

from .errors import PsyDTError

RUN_FILE = "psydt_run.json"  # written next to the adapter by training, read by inference


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise PsyDTError(f"--device {device}：这台机器没有可用的 CUDA GPU。")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(name: str, device: str):
    """auto: bf16 on a GPU that supports it, otherwise fp32 (fp16 only when asked for)."""
    import torch

    if name == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise PsyDTError("这块 GPU 不支持 bf16，请改用 --dtype fp16 或 --dtype fp32。")
    return table[name]


def load_tokenizer(path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise PsyDTError(f"无法从 {path} 加载分词器：{err}") from None
    if not getattr(tok, "chat_template", None):
        raise PsyDTError(f"{path} 的分词器没有 chat_template（tokenizer_config.json），无法渲染对话。")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(path, dtype, device: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError) as err:
        raise PsyDTError(f"无法从 {path} 加载模型（只加载 safetensors 权重）：{err}") from None
    if device:
        model.to(device)
    return model


def read_run_info(adapter_dir) -> dict:
    path = Path(adapter_dir) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text("utf-8"))
    except ValueError:
        return {}


def base_model_signature(config) -> dict:
    """What must match between an adapter's base model and the model it is loaded onto."""
    keys = (
        "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "vocab_size",
    )
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: d.get(k) for k in keys}
