"""LoRA on the base model, the Hugging Face Trainer, SwanLab, checkpoints and the saved outputs."""
import json
import math
import os
import platform
import shutil
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.files import atomic_write_json
from psydt_lora.hub import safetensors_complete
from psydt_lora.models import RUN_FILE, base_model_signature
from psydt_lora.data.packing import IGNORE_INDEX, default_pack_length, features, fill_rows, merge_features
from psydt_lora.data.samples import sample_lengths
from psydt_lora.train.signals import is_main_process, make_stop_callback, world_size

ADAPTER_DIR = "lora_adapter"
METRICS_FILE = "metrics.json"
LOSS_PLOT = "loss_curve.png"
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def planned_steps(n_samples: int, batch_size: int, accumulation: int, epochs: float, max_steps: int) -> int:
    """Optimizer steps the Trainer will run, computed the way it computes them (per process)."""
    if max_steps > 0:
        return max_steps
    batches = math.ceil(n_samples / (batch_size * world_size()))
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    return math.ceil(epochs * per_epoch)


# -- what the run is about to do ---------------------------------------------------------------------
def device_lines(device: str, dtype, requested_dtype: str) -> list[str]:
    """Where training runs, and a warning when that is the CPU (slow) or not what was asked for."""
    import torch

    launcher = []
    if device == "cpu" and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        # accelerate enables FSDP only for multi-accelerator runs; CPU processes fall back to DDP
        launcher.append("[警告] FSDP 需要 GPU：accelerate 在 CPU 进程上不启用 FSDP，这次按普通 DDP 训练（每个进程一份完整模型）。")

    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    procs = f"，{world_size()} 个进程" if world_size() > 1 else ""
    lines = [f"[运行] 设备：{device}（{name}）{procs}；精度：{str(dtype).replace('torch.', '')}"]
    if device == "cpu":
        why = ("安装的是 CPU 版 torch（torch.version.cuda 为空），请按 README 安装 CUDA 版" if torch.version.cuda is None
               else f"torch 是 CUDA {torch.version.cuda} 版，但 torch.cuda.is_available() 为 False（检查显卡驱动 / CUDA_VISIBLE_DEVICES）")
        asked = f"你指定了 --dtype {requested_dtype}，但" if requested_dtype in ("bf16", "fp16") else ""
        lines.append(f"[警告] {asked}没有可用的 CUDA GPU，将在 CPU 上训练，每步可能要几十秒：{why}。")
    return lines + launcher


def run_summary(trainer, tokens: int, args, steps: int, output_dir: Path) -> list[str]:
    from psydt_lora.train.loss import describe_head

    model = trainer.model
    trainable, total = model.get_nb_trainable_parameters()
    attention = getattr(model.config, "_attn_implementation", None) or "eager"
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size()
    data = trainer.train_dataset
    rows = "" if data.rows is None else f"，--packing 拼成 {len(data):,} 行（每行最多 {pack_capacity(args):,} token，样本互不可见）"
    return [
        f"[运行] 注意力实现：{attention}；LoRA r={args.lora_r} α={args.lora_alpha}，可训练参数 {trainable:,} / {total:,}"
        f"（{100 * trainable / max(total, 1):.2f}%）",
        f"[运行] 损失：{describe_head(trainer.compute_loss_func.head)}",  # the head build_trainer chose
        f"[运行] 训练样本 {len(data.samples):,} 个（{tokens:,} token）{rows}；有效批量 {args.per_device_train_batch_size} × "
        f"{args.gradient_accumulation_steps}（梯度累积）× {world_size()}（进程）= {batch}；计划 {steps} 步",
        f"[运行] 输出目录：{output_dir.resolve()}（检查点每 {args.save_steps} 步，最终 adapter 在 {ADAPTER_DIR}/）",
    ]


def make_progress_callback():
    """The Trainer's progress bar, in Chinese, with an ETA from a moving average of recent steps, and log
    lines whose numbers print as numbers."""
    from transformers.trainer_callback import ProgressCallback

    class ProgressPrinter(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.current_step = state.global_step
            if not state.is_world_process_zero:
                return
            from tqdm.auto import tqdm

            print("[进度] 剩余时间按最近几步的平均速度估计；前几步含预热（分配显存、首次编译），"
                  "估计从第 5 步左右起才可靠。", flush=True)
            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, desc="训练", unit="步",
                                     dynamic_ncols=True, smoothing=0.1)

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            if state.is_world_process_zero and self.prediction_bar is None and eval_dataloader is not None:
                from tqdm.auto import tqdm

                self.prediction_bar = tqdm(total=len(eval_dataloader), desc="验证", unit="批", leave=False,
                                           dynamic_ncols=True)
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            shown = "，".join(f"{k} {format_number(v)}" for k, v in logs.items() if k != "total_flos")
            line = f"[日志] 第 {state.global_step}/{state.max_steps} 步：{shown}"
            (self.training_bar.write if self.training_bar is not None else print)(line)

    return ProgressPrinter()


def format_number(v) -> str:
    if isinstance(v, float):
        return f"{v:.3e}" if v != 0 and abs(v) < 1e-3 else f"{v:.4g}"
    return str(v)


# -- model ----------------------------------------------------------------------------------------
def add_lora(model, r: int, alpha: int, dropout: float, target_modules, gradient_checkpointing: bool):
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in present]
    if missing:
        raise PsyDTError(
            f"--target_modules 中的 {', '.join(missing)} 在模型里不存在；可用的线性层名如 "
            f"{', '.join(sorted(m for m in present if m.endswith('_proj')))}。"
        )
    model.config.use_cache = False
    if gradient_checkpointing:
        # transformers 5 renamed gradient checkpointing to activation checkpointing
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
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


def pack_capacity(args) -> int:
    """Tokens a row may hold: --pack_length, by default 1.5 x --max_length (a shared_prefix pack's limit)."""
    return args.pack_length or default_pack_length(args.max_length)


def datasets_for(args, train_samples, eval_samples):
    """(train set, eval set or None). --packing merges the training samples into rows; evaluation keeps one
    sample a row, so its loss (the Trainer averages per batch) stays comparable between runs."""
    train_set = SampleDataset(train_samples, args.packing, pack_capacity(args))
    return train_set, (SampleDataset(eval_samples) if eval_samples else None)


class SampleDataset:
    """Samples as the Trainer wants them (dicts of token id lists): one a row, or with `--packing` several
    a row (`packing.fill_rows` up to the pack length), each isolated from the others."""

    def __init__(self, samples, packing: bool = False, capacity: int = 0):
        self.samples = samples
        self.rows = fill_rows(sample_lengths(samples), capacity) if packing and len(samples) else None

    def __len__(self):
        return len(self.rows) if self.rows is not None else len(self.samples)

    def __getitem__(self, i):
        if self.rows is None:
            return features(self.samples[i])
        return merge_features([features(self.samples[j]) for j in self.rows[i]])


# -- the run, step by step ----------------------------------------------------------------------------
def build_model(args, model_dir, dtype):
    """The base model (4-bit for QLoRA when asked) with LoRA on the target modules; (model, base config)."""
    from psydt_lora.models import load_base_model

    quantization = four_bit_config(dtype) if args.load_in_4bit else None
    model = load_base_model(model_dir, dtype, trust_remote_code=args.trust_remote_code, quantization_config=quantization,
                            attn_implementation=args.attn_implementation)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    base_config = model.config
    targets = [m.strip() for m in args.target_modules.split(",") if m.strip()]
    return add_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, targets, args.gradient_checkpointing), base_config


def make_callbacks(args, data_stats) -> tuple[list, list, object]:
    """(Trainer reporters, callbacks, the stop-on-signal callback). SwanLab through its own callback."""
    reporters = [r.strip() for r in args.report_to.split(",") if r.strip() and r.strip() != "none"]
    callbacks = []
    if "swanlab" in reporters:
        reporters.remove("swanlab")
        if is_main_process():
            config = {**vars(args), "data": {k: {kk: vv for kk, vv in v.items() if kk != "notes"} for k, v in data_stats.items()}}
            callbacks.append(make_swanlab_callback(args.swanlab_project, args.swanlab_run_name,
                                                   resolve_swanlab_mode(args.swanlab_mode), Path(args.output_dir) / "swanlog", config))
    stop = make_stop_callback()
    return reporters, callbacks + [stop], stop


# CLI flags named like a TrainingArguments field that the run sets itself rather than passing through
OWN_HANDLING = ("output_dir", "report_to", "do_eval", "eval_steps", "gradient_checkpointing", "resume_from_checkpoint")


def passed_through(args) -> list[str]:
    """The CLI flags that go to TrainingArguments as they are: every flag named like one of its fields
    (so a new Trainer option is one `add_argument`), except OWN_HANDLING."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    return sorted(k for k in vars(args) if k in names and k not in OWN_HANDLING)


def training_arguments(args, reporters, dtype, device: str, do_eval: bool):
    """TrainingArguments: the passed-through flags, then what the run decides (precision from the
    resolved dtype, evaluation only when there is eval data, activation checkpointing done by PEFT)."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        **{k: getattr(args, k) for k in passed_through(args)},
        output_dir=str(args.output_dir),
        logging_first_step=True,
        save_strategy="steps",
        eval_strategy="steps" if do_eval else "no",
        eval_steps=args.eval_steps if do_eval else None,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        report_to=reporters or "none",
        remove_unused_columns=False,
        prediction_loss_only=True,  # evaluation keeps the loss only, not every position's logits
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        dataloader_pin_memory=device == "cuda",
        use_cpu=device == "cpu",
        ddp_find_unused_parameters=False,
    )


def make_trainer_class():
    import torch
    from transformers import Trainer

    from psydt_lora.train.loss import head_detached

    class SupervisedTrainer(Trainer):
        """The Trainer, with the model's LM head detached during each loss computation: the loss
        (`loss.SupervisedLoss`) applies it, chunked, at the supervised positions only."""

        def compute_loss_context_manager(self):
            stack = super().compute_loss_context_manager()
            stack.enter_context(head_detached(self.model, self.compute_loss_func.head))
            return stack

        def _prepare_inputs(self, inputs):
            """Tensors go to the device as usual; a flex_attention BlockMask (not a tensor) too."""
            mask = inputs.get("attention_mask")
            inputs = super()._prepare_inputs(inputs)
            if mask is not None and not isinstance(mask, torch.Tensor):
                inputs["attention_mask"] = mask.to(self.args.device)
            return inputs

    return SupervisedTrainer


def build_trainer(args, model, tokenizer, train_set, eval_set, data_stats, device: str, dtype):
    """(Trainer, collator, stop callback): our collator and loss, our progress printer."""
    from transformers.trainer_callback import ProgressCallback

    from psydt_lora.train.loss import SupervisedLoss, fused_head
    from psydt_lora.data.packing import PackCollator

    reporters, callbacks, stop = make_callbacks(args, data_stats)
    collator = PackCollator(tokenizer.pad_token_id, pad_to_multiple_of=8 if device == "cuda" else None,
                            block_mask=args.attn_implementation == "flex_attention")
    trainer = make_trainer_class()(
        model=model,
        args=training_arguments(args, reporters, dtype, device, eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        compute_loss_func=SupervisedLoss(fused_head(model)),  # logits only where the loss is (the collator says where)
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(make_progress_callback())
    return trainer, collator, stop


def run(trainer, stop, resume: str | None, steps: int):
    """Train, resuming from `resume`; a checkpoint already at the last step is only loaded (the final save
    did not happen). Returns the Trainer's result, or None when nothing was trained."""
    from transformers import TrainerState

    main = is_main_process()
    if resume and checkpoint_step(resume) >= steps:
        if main:
            print(f"[续训] {resume} 已是最后一步，只补上保存 adapter", flush=True)
        load_checkpoint_adapter(trainer.model, resume)
        trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
        return None
    if resume and main:
        print(f"[续训] 从检查点 {resume} 继续训练（--resume_from_checkpoint none 可从头开始）", flush=True)
    with stop.installed():  # on every rank: a launcher's SIGTERM reaches them all
        return trainer.train(resume_from_checkpoint=resume)


def finish_distributed() -> None:
    """Leave the process group together: a rank that exits while the others still hold it can abort in
    the communication library's teardown ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# -- checkpoints ----------------------------------------------------------------------------------
def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def optimizer_layout(path: Path) -> str | None:
    """Which launcher wrote the checkpoint's optimizer state, or None when it is missing or cut short:
    'plain' (optimizer.pt + scheduler.pt), 'deepspeed' (`latest` naming a global_stepN/ folder whose
    optimizer shards are all there), 'fsdp' (optimizer_0/ shards or optimizer.bin)."""
    if _nonempty(path / "optimizer.pt"):
        return "plain" if _nonempty(path / "scheduler.pt") else None
    if _nonempty(path / "latest"):
        tag = path / (path / "latest").read_text("utf-8").strip()
        model_states = list(tag.glob("*model_states.pt")) if tag.is_dir() else []
        optim_states = list(tag.glob("*optim_states.pt")) if tag.is_dir() else []
        if model_states and optim_states and all(_nonempty(p) for p in model_states + optim_states):
            return "deepspeed"
        return None
    if _nonempty(path / "optimizer.bin") or any(_nonempty(p) for p in (path / "optimizer_0").glob("*")):
        return "fsdp"
    return None


def checkpoint_complete(path: Path) -> bool:
    """A Trainer checkpoint is usable when every file it writes is there, in whichever layout the
    launcher uses (see `optimizer_layout`); trainer_state.json is written last, so a checkpoint cut
    short by a kill lacks it or has it truncated. The adapter weights must be whole where they are
    written (DeepSpeed ZeRO-3 without 16-bit gathering keeps them only in global_stepN/)."""
    path = Path(path)
    try:
        json.loads((path / "trainer_state.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    layout = optimizer_layout(path)
    if layout is None:
        return False
    adapter = path / "adapter_model.safetensors"
    if layout == "plain" or adapter.exists():
        return safetensors_complete(adapter)
    return True


def checkpoint_step(path) -> int:
    """The optimizer step a (complete) checkpoint was saved at."""
    return int(json.loads((Path(path) / "trainer_state.json").read_text("utf-8")).get("global_step", 0))


def load_checkpoint_adapter(model, checkpoint) -> None:
    """Put a checkpoint's LoRA weights into `model` (for a run that finished training but not its save)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(checkpoint) / "adapter_model.safetensors")))


def final_eval(trainer) -> dict:
    """The evaluation at the last step: the Trainer already runs one there; only run it when it did not."""
    step = trainer.state.global_step
    done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == step]
    return dict(done[-1]) if done else trainer.evaluate()


def find_checkpoint(output_dir, requested: str) -> str | None:
    """`requested`: 'auto' (latest complete checkpoint in output_dir, if any), 'none', or a path."""
    if requested == "none":
        return None
    if requested != "auto":
        path = Path(requested)
        if not checkpoint_complete(path):
            raise PsyDTError(f"--resume_from_checkpoint {path} 不是完整的检查点（缺少文件或文件不完整）。")
        return str(path)
    out = Path(output_dir)
    if not out.is_dir():
        return None
    found = []
    for p in out.glob("checkpoint-*"):
        try:
            found.append((int(p.name.split("-")[1]), p))
        except (IndexError, ValueError):
            continue
    for _, p in sorted(found, reverse=True):
        if checkpoint_complete(p):
            return str(p)
        print(f"[续训] 跳过不完整的检查点 {p}", flush=True)
    return None


# -- SwanLab ----------------------------------------------------------------------------------------
def resolve_swanlab_mode(requested: str) -> str:
    if requested in ("cloud", "online"):
        return "online"
    if requested != "auto":
        return requested
    try:
        import swanlab

        logged_in = bool(swanlab.Settings().api_key)
    except Exception:
        logged_in = False
    return "online" if logged_in else "local"


def make_swanlab_callback(project: str, run_name: str | None, mode: str, log_dir: Path, config: dict):
    """SwanLab's own Trainer callback (transformers' built-in reporter crashes with swanlab 0.10).
    Only numbers and settings are logged -- never dialogue text."""
    try:
        from swanlab.integration.transformers import SwanLabCallback
    except ImportError:
        raise PsyDTError("没有安装 swanlab：pip install 'swanlab[dashboard]'，或用 --report_to none 关闭记录。") from None
    if mode == "local":
        print(f"[SwanLab] 未登录，使用本地模式；查看：swanlab watch {log_dir}（登录后自动改为云端：swanlab login）", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    return SwanLabCallback(
        project=project, experiment_name=run_name, mode=mode, logdir=str(log_dir), config=config
    )


# -- outputs ----------------------------------------------------------------------------------------
def loss_history(log_history) -> dict:
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    return {"train": train, "eval": evals}


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "swanlab", "modelscope"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def most_common_system_prompt(dialogues) -> str | None:
    counts = Counter(d.messages[0]["content"] for d in dialogues if d.messages and d.messages[0]["role"] == "system")
    return counts.most_common(1)[0][0] if counts else None


def save_adapter(trainer, adapter_dir: Path, run_info: dict, extra_files=()) -> None:
    """Adapter (safetensors) + tokenizer/chat template + run JSON, written to a folder beside
    `adapter_dir` and renamed into place, so `adapter_dir` is never half-written.

    Called on every rank: the weights go through the Trainer's own save, which gathers parameters that
    DeepSpeed ZeRO-3 or FSDP partitioned across ranks and writes the tokenizer (its processing class);
    the main process adds the rest and renames the folder."""
    from psydt_lora.files import write_dir

    adapter_dir = Path(adapter_dir)
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.saving")  # the same path on every rank
    main = trainer.is_world_process_zero()
    if getattr(trainer, "is_fsdp_enabled", False):  # a sharded state dict would not save the adapter whole
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if main and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # every rank takes part; the main process writes
    if not main:
        return

    def fill(folder):
        (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle; the run JSON holds the settings
        atomic_write_json(folder / RUN_FILE, run_info)
        for f in extra_files:
            if Path(f).is_file():
                shutil.copy2(f, folder / Path(f).name)

    write_dir(adapter_dir, fill, tmp=tmp)


def run_info(args, base_config, prompt_fmt: dict, system_prompt, data_stats: dict) -> dict:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items()},
        "base_model": {"path": str(args.model_local_dir), "repo": args.model_repo, "signature": base_model_signature(base_config)},
        "prompt_format": prompt_fmt,
        "system_prompt": system_prompt,
        "data": data_stats,
        "versions": library_versions(),
        "host": platform.node(),
        "time": time.time(),
    }
