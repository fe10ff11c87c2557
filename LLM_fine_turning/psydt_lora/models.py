"""Loading the tokenizer, the base model and a LoRA adapter. Safetensors only; no remote code
unless the user asks for it."""
from pathlib import Path
from typing import NamedTuple

from psydt_lora.errors import PsyDTError
from psydt_lora.hub import safetensors_complete
from psydt_lora.run_record import RunRecord


DEFAULT_CONTEXT = 32768  # Qwen3's context window, where a config or the user does not say


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


def load_base_model(path, dtype, device: str | None = None, trust_remote_code: bool = False, quantization_config=None,
                    attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM

    extra = {"quantization_config": quantization_config, "device_map": {"": local_cuda()}} if quantization_config else {}
    if attn_implementation:
        extra["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True, **extra
        )
    except (OSError, ValueError) as err:
        raise PsyDTError(f"无法从 {path} 加载模型（只加载 safetensors 权重）：{err}") from None
    if device:
        model.to(device)
    return model


def local_cuda() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def base_model_signature(config) -> dict:
    """What must match between an adapter's base model and the model it is loaded onto."""
    keys = (
        "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "vocab_size",
    )
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: d.get(k) for k in keys}


def check_inference_paths(model_path, adapter_path=None) -> None:
    """The folders inference loads from, checked in a moment before anything is read or fetched."""
    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise PsyDTError(
            f"找不到基础模型 {model_path}（缺少 config.json）。先运行 python LLM_fine_turning/train_psydt_lora.py"
            "（会自动下载 Qwen/Qwen3-1.7B），或用 --model_path 指向模型文件夹。"
        )
    if adapter_path is not None:
        check_adapter_dir(adapter_path, "或加 --no_adapter 直接和基础模型对话")


def check_adapter_dir(adapter_path, alternative: str = "") -> None:
    """A LoRA adapter folder with its config and whole safetensors weights."""
    adapter_path = Path(adapter_path)
    if not (adapter_path / "adapter_config.json").is_file():
        raise PsyDTError(
            f"找不到 LoRA adapter {adapter_path}（缺少 adapter_config.json）。先训练："
            f"python LLM_fine_turning/train_psydt_lora.py；或用 --adapter_path 指定{'，' + alternative if alternative else ''}。"
        )
    weights = adapter_path / "adapter_model.safetensors"
    if not weights.is_file():
        raise PsyDTError(f"{adapter_path} 里没有 adapter_model.safetensors（只加载 safetensors 格式的 adapter）。")
    if not safetensors_complete(weights):
        raise PsyDTError(f"{weights} 不完整（可能复制或保存时被中断），请重新复制或重新训练。")


class InferenceModel(NamedTuple):
    model: object
    tokenizer: object
    record: RunRecord | None  # the adapter's run record (None: no adapter, or one trained elsewhere)
    device: str


def load_for_inference(model_path, adapter_path=None, *, merge=False, device="auto", dtype="auto",
                       trust_remote_code=False, record: RunRecord | None = None) -> InferenceModel:
    """Base model (+ LoRA adapter) ready for generation, with the adapter's run record (`record` when the
    caller already read it, else read here).

    The tokenizer (and so the chat template) comes from the adapter folder when it has one, since that
    is the template the adapter was trained with. An adapter made for a different base model is refused.
    """
    model_path = Path(model_path)
    adapter_path = None if adapter_path is None else Path(adapter_path)
    check_inference_paths(model_path, adapter_path)
    if record is None and adapter_path is not None:
        record = RunRecord.read(adapter_path)
    from transformers import AutoConfig

    base_config = AutoConfig.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    trained_on = record.base_model.signature if record else None
    if trained_on:
        here = base_model_signature(base_config)
        diff = [f"{k}: 训练时 {trained_on[k]} / 现在 {here.get(k)}" for k in trained_on if trained_on[k] != here.get(k)]
        if diff:
            raise PsyDTError(
                f"adapter {adapter_path} 是在另一个基础模型（{record.base_model.path}）上训练的，"
                f"与 --model_path {model_path} 不一致：{'；'.join(diff)}。请换用对应的基础模型。"
            )
    tok_source = adapter_path if adapter_path is not None and (adapter_path / "tokenizer_config.json").is_file() else model_path
    tokenizer = load_tokenizer(tok_source, trust_remote_code)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    model = load_base_model(model_path, torch_dtype, trust_remote_code=trust_remote_code)
    if adapter_path is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_path))
        except (RuntimeError, ValueError, KeyError) as err:
            raise PsyDTError(
                f"adapter {adapter_path} 与基础模型 {model_path} 不匹配（形状或层名不同）：{str(err).splitlines()[0][:300]}"
            ) from None
        if merge:
            model = model.merge_and_unload()
    model.to(device)
    model.eval()
    return InferenceModel(model, tokenizer, record, device)



def weights_identity(model_dir) -> list:
    """What tells one checkpoint's weights from another of the same shape, without reading them: each
    safetensors file's name, size and modification time."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
