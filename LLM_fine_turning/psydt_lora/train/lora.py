"""The base model for training: 4-bit for QLoRA when asked, LoRA on the target modules."""
import json
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.models import load_base_model
from psydt_lora.train.config import LoraSettings, ModelConfig


def build_model(model_config: ModelConfig, lora: LoraSettings, model_dir, dtype):
    """The base model (4-bit for QLoRA when asked) with LoRA on the target modules; (model, base config)."""
    m = model_config
    quantization = four_bit_config(dtype) if m.load_in_4bit else None
    model = load_base_model(model_dir, dtype, trust_remote_code=m.trust_remote_code, quantization_config=quantization,
                            attn_implementation=m.attn_implementation)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=m.gradient_checkpointing)
    base_config = model.config
    if m.adapter_path:  # the preference stage continues an SFT adapter: its own r, alpha and target modules
        return continue_adapter(model, m.adapter_path, m.gradient_checkpointing), base_config
    return add_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules, m.gradient_checkpointing), base_config


def continued_lora(adapter_dir) -> LoraSettings:
    """The LoRA settings of a trained adapter (its adapter_config.json): what continuing it trains with."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        c = json.loads(path.read_text("utf-8"))
        targets = c["target_modules"]
        return LoraSettings(r=int(c["r"]), alpha=int(c["lora_alpha"]), dropout=float(c.get("lora_dropout") or 0),
                            target_modules=tuple(sorted(targets)) if isinstance(targets, list) else (str(targets),))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PsyDTError(f"{path} 读不出 LoRA 设置（r、lora_alpha、target_modules）：{err}") from None


def continue_adapter(model, adapter_dir, gradient_checkpointing: bool):
    """The base with a trained adapter loaded trainable (its weights the policy's starting point)."""
    from peft import PeftModel

    prepare_for_training(model, gradient_checkpointing)
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    except (RuntimeError, ValueError, KeyError) as err:
        raise PsyDTError(f"--adapter_path {adapter_dir} 与基础模型不匹配（形状或层名不同）：{str(err).splitlines()[0][:300]}") from None


def prepare_for_training(model, gradient_checkpointing: bool) -> None:
    model.config.use_cache = False
    if gradient_checkpointing:
        # transformers 5 renamed gradient checkpointing to activation checkpointing
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()


def add_lora(model, r: int, alpha: int, dropout: float, target_modules, gradient_checkpointing: bool):
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in present]
    if missing:
        raise PsyDTError(
            f"--target_modules 中的 {', '.join(missing)} 在模型里不存在；可用的线性层名如 "
            f"{', '.join(sorted(m for m in present if m.endswith('_proj')))}。"
        )
    prepare_for_training(model, gradient_checkpointing)
    config = LoraConfig(
        task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules)
    )
    return get_peft_model(model, config)


def four_bit_config(compute_dtype):
    """QLoRA: NF4 weights with double quantisation, computing in bf16/fp16. CUDA + bitsandbytes only."""
    import torch

    if not torch.cuda.is_available():
        raise PsyDTError("--load_in_4bit（QLoRA）需要 NVIDIA GPU（CUDA）；这台机器没有，请去掉 --load_in_4bit。")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise PsyDTError("--load_in_4bit 需要 bitsandbytes：pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    if compute_dtype in (None, torch.float32):
        compute_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)

