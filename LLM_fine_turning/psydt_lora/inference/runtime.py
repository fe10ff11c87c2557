"""The one runtime every inference program runs over: the model and tokenizer with their adapter and its run
record, the generation settings, the system prompt, the safety layer (built whole, its guard included) and
the context limit. `open_runtime` builds it once per start; chat, test, serve and export receive it.

torch and transformers stay lazy (inside `load_for_inference` and `summary`), so `--help` stays fast."""
import threading
from dataclasses import dataclass, field
from pathlib import Path

from psydt_lora.inference.generation import GenerationSettings, context_limit
from psydt_lora.inference.settings import ConversationSettings, ModelSettings, SafetySettings
from psydt_lora.models import DEFAULT_CONTEXT, load_for_inference, load_tokenizer, pick_device
from psydt_lora.prompt import DEFAULT_SYSTEM
from psydt_lora.safety.guard import load_guard
from psydt_lora.safety.session import DisabledSafety, Safety


@dataclass(frozen=True)
class Loaded:
    """The weights in this process (model None: a remote engine generates), and the lock every user of the
    model holds -- generation, and a guard that judges on this same model (--safety_model base)."""
    model: object
    tokenizer: object
    device: str
    context_limit: int | None
    lock: object = field(default_factory=threading.Lock)


def load_model(settings: ModelSettings, record, enable_thinking: bool) -> Loaded:
    """The model ready for inference, with a note when thinking differs from training."""
    model, tokenizer, record, device = load_for_inference(
        settings.model_path, settings.adapter_path, merge=settings.merge, device=settings.device,
        dtype=settings.dtype, trust_remote_code=settings.trust_remote_code, record=record)
    fmt = record.prompt_format if record else {}
    if fmt and fmt.get("enable_thinking", False) != enable_thinking:
        print(f"[提示] adapter 训练时 enable_thinking={fmt.get('enable_thinking')}，现在是 {enable_thinking}。")
    return Loaded(model, tokenizer, device, context_limit(model, settings.max_context))


def remote_tokenizer(settings: ModelSettings) -> Loaded:
    """For a remote engine: no weights, only the local tokenizer (adapter folder, else model folder) to fit the
    history into --max_context tokens; without one, the history window alone applies."""
    device = pick_device(settings.device)
    for folder in (settings.adapter_path, settings.model_path):
        if folder and (Path(folder) / "tokenizer_config.json").is_file():
            tokenizer = load_tokenizer(folder, settings.trust_remote_code)
            return Loaded(None, tokenizer, device, settings.max_context or DEFAULT_CONTEXT)
    return Loaded(None, None, device, None)


def build_safety(settings: SafetySettings, hub: str, loaded: Loaded) -> Safety | DisabledSafety:
    """The safety layer, whole: its resources and the guard of --safety_model (on the device inference uses;
    `base` and the fallback judge on the loaded model, under its lock)."""
    if not settings.enabled:
        return DisabledSafety()
    choice = load_guard(settings.guard, hub, loaded.model, loaded.tokenizer, loaded.device, lock=loaded.lock)
    return Safety(settings.resources, choice.guard, choice.why)


def system_prompt(conversation: ConversationSettings, record) -> tuple[str, str]:
    """(the system prompt, where it came from): --system_prompt, else the one the adapter trained with."""
    if conversation.system_prompt is not None:
        return conversation.system_prompt, "--system_prompt"
    trained = record.system_prompt if record else None
    return (trained, "训练数据") if trained else (DEFAULT_SYSTEM, "内置默认")


@dataclass(frozen=True)
class Runtime:
    model_settings: ModelSettings
    generation: GenerationSettings
    conversation: ConversationSettings
    record: object  # the adapter's RunRecord, or None
    system: str
    system_source: str  # where `system` came from, in words
    loaded: Loaded
    safety: Safety | DisabledSafety

    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def device(self) -> str:
        return self.loaded.device

    @property
    def context_limit(self) -> int | None:
        return self.loaded.context_limit

    @property
    def adapter(self) -> str | None:
        return self.model_settings.adapter_path

    @property
    def can_compare(self) -> bool:
        """/compare and --compare_base switch the adapter off: it must be loaded and not merged."""
        return self.adapter is not None and not self.model_settings.merge

    def summary(self) -> str:
        """Where the model runs and how it will answer, before the first reply."""
        import torch

        device, model, ms = self.device, self.model, self.model_settings
        name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else device
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        attention = getattr(model.config, "_attn_implementation", None) or "eager"
        lora = "（不加载）" if self.adapter is None else f"{self.adapter}{'（已合并）' if ms.merge else ''}"
        lines = [f"[运行] 模型：{ms.model_path}；LoRA：{lora}",
                 f"[运行] 设备：{device}（{name}）；精度：{dtype}；注意力实现：{attention}；上下文 {self.context_limit} token",
                 f"[运行] 生成：{self.generation.describe()}；系统提示词来自：{self.system_source}"]
        if device == "cpu":
            lines.append("[提示] 没有使用 GPU，在 CPU 上生成会比较慢。")
        return "\n".join(lines)


def open_runtime(model: ModelSettings, generation: GenerationSettings, conversation: ConversationSettings,
                 safety: SafetySettings, record, *, weights: bool = True) -> Runtime:
    """Load the weights (or, with `weights=False`, only the tokenizer a remote engine's history needs), then the
    safety layer on them."""
    loaded = load_model(model, record, generation.enable_thinking) if weights else remote_tokenizer(model)
    system, source = system_prompt(conversation, record)
    return Runtime(model, generation, conversation, record, system, source, loaded, build_safety(safety, model.hub, loaded))
