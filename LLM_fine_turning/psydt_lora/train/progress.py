"""What the run says while it runs: where it trains, the summary before the first step, the progress bar."""
import os
import platform
from pathlib import Path

from psydt_lora.train.config import TrainConfig
from psydt_lora.train.loss import describe_head
from psydt_lora.train.outputs import ADAPTER_DIR
from psydt_lora.train.ranks import world_size
from psydt_lora.train.sample_dataset import pack_capacity


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


def run_summary(trainer, tokens: int, config: TrainConfig, steps: int) -> list[str]:
    t, output_dir = config.trainer, config.trainer.output_path
    model = trainer.model
    trainable, total = model.get_nb_trainable_parameters()
    attention = getattr(model.config, "_attn_implementation", None) or "eager"
    batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size()
    return [
        f"[运行] 注意力实现：{attention}；{lora_line(model, config)}，可训练参数 {trainable:,} / {total:,}"
        f"（{100 * trainable / max(total, 1):.2f}%）",
        f"[运行] 损失：{loss_line(trainer, config)}",
        f"[运行] 训练样本 {samples_line(trainer.train_dataset, config, tokens)}；有效批量 {t.per_device_train_batch_size} × "
        f"{t.gradient_accumulation_steps}（梯度累积）× {world_size()}（进程）= {batch}；计划 {steps} 步",
        f"[运行] 输出目录：{output_dir.resolve()}（检查点每 {t.save_steps} 步，最终 adapter 在 {ADAPTER_DIR}/）",
    ]


def lora_line(model, config: TrainConfig) -> str:
    if config.model.adapter_path:  # continued: the adapter's own rank, not --lora_r
        peft = model.peft_config["default"]
        return f"继续训练 {config.model.adapter_path}（LoRA r={peft.r} α={peft.lora_alpha}）"
    return f"LoRA r={config.lora.r} α={config.lora.alpha}"


def loss_line(trainer, config: TrainConfig) -> str:
    pref = config.preference
    if pref is None:
        return describe_head(trainer.compute_loss_func.head)  # the head build_trainer chose
    reference = {"base": "基础模型（关闭 adapter）", "adapter": f"SFT 模型 {config.model.adapter_path}",
                 "none": "不需要"}[pref.reference]
    extra = f"，SFT 项 × {pref.ftx:g}" if pref.ftx else ""
    gamma = f"，gamma {pref.simpo_gamma:g}" if pref.loss == "simpo" else ""
    return (f"偏好优化 {pref.loss}（beta {pref.beta:g}{gamma}{extra}）；参考模型：{reference}；"
            f"{describe_head(trainer.head)}")


def samples_line(data, config: TrainConfig, tokens: int) -> str:
    if config.preference is not None:
        return f"{len(data):,} 棵偏好树（每个提示词一棵，{tokens:,} token）"
    rows = "" if data.rows is None else f"，--packing 拼成 {len(data):,} 行（每行最多 {pack_capacity(config.samples):,} token，样本互不可见）"
    return f"{len(data.samples):,} 个（{tokens:,} token）{rows}"


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
    """Floats to 4 decimals (a loss of 11.9412 moving in its third decimal shows it), tiny ones (learning rates)
    in scientific notation."""
    if isinstance(v, float):
        return f"{v:.3e}" if v != 0 and abs(v) < 1e-3 else f"{v:.4f}"
    return str(v)

