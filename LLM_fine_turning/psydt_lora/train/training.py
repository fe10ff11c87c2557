"""One training run, step by step: set up the model and the Trainer, train, save what a finished run leaves.

The train wing's rooms: lora (the model), trainer (the Trainer, its arguments and loss wiring), rows (the
training set, --packing rows), progress (what the run says), signals and ranks (stopping and leaving),
checkpoints, tracking (SwanLab), outputs (adapter, run JSON), loss (the LM head at supervised positions)."""
import os
from pathlib import Path

from psydt_lora.files import atomic_write_json
from psydt_lora.train.lora import build_model
from psydt_lora.train.outputs import (ADAPTER_DIR, LOSS_PLOT, METRICS_FILE, loss_history, most_common_system_prompt,
                                      run_info, save_adapter)
from psydt_lora.train.progress import device_lines, run_summary
from psydt_lora.train.ranks import finish_distributed, is_main_process
from psydt_lora.train.signals import ignore_sigterm_while_leaving
from psydt_lora.train.trainer import build_trainer, final_eval, run


def train(args, model_dir, tokenizer, train_dialogues, train_set, eval_set, data_stats, prompt_fmt, *,
          resume, steps) -> int:
    """Set up -> train -> save; the exit code (130 / 143 when a signal stopped it after a checkpoint)."""
    from transformers import set_seed

    from psydt_lora.models import pick_dtype, pick_device

    set_seed(args.seed)
    device = pick_device("auto")
    if device == "cpu":  # the Trainer imports DeepSpeed whenever it is installed; told the device, it does not guess aloud
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    dtype = pick_dtype(args.dtype, device)
    if is_main_process():
        print("\n".join(device_lines(device, dtype, args.dtype)), flush=True)
    model, base_config = build_model(args, model_dir, dtype)
    trainer, collator, stop = build_trainer(args, model, tokenizer, train_set, eval_set, data_stats, device, dtype)
    if is_main_process():
        tokens = data_stats["train"]["tokens"]
        print("\n".join(run_summary(trainer, tokens, args, steps, Path(args.output_dir))), flush=True)
    result = run(trainer, stop, resume, steps)
    if stop.exit_code:
        ignore_sigterm_while_leaving()
        if trainer.is_world_process_zero():
            saved = Path(args.output_dir) / f"checkpoint-{trainer.state.global_step}"  # the Trainer's folder name
            print(f"[中断] 已保存检查点 {saved}。用同样的命令重新运行即可继续训练。", flush=True)
        finish_distributed()
        return stop.exit_code
    metrics = {"train": result.metrics if result else {}, "padding_share": round(collator.padding_share(), 4)}
    if eval_set is not None:
        metrics["eval"] = final_eval(trainer)
    from psydt_lora.data.datasets import system_prompts

    info = run_info(args, base_config, prompt_fmt, most_common_system_prompt(train_dialogues), data_stats)
    info["system_prompts"] = system_prompts(train_dialogues)  # each dataset's; chat / test / serve use system_prompt
    save_outputs(args, trainer, metrics, info, collator.padding_share())
    finish_distributed()
    return 0


def save_outputs(args, trainer, metrics, info, padding_share) -> None:
    """Metrics, loss curve and run JSON from the main process; the adapter through every rank."""
    from psydt_lora.plots import plot_losses

    output_dir = Path(args.output_dir)
    plot = output_dir / LOSS_PLOT
    main_rank = trainer.is_world_process_zero()
    if main_rank:
        hint = "（--group_by_length 可以减少）" if padding_share > 0.05 and not args.group_by_length else ""
        print(f"[训练] padding 占比 {100 * padding_share:.1f}%{hint}", flush=True)
        history = loss_history(trainer.state.log_history)
        metrics["loss_history"] = history
        metrics["final_train_loss"] = history["train"][-1][1] if history["train"] else None
        metrics["final_eval_loss"] = metrics.get("eval", {}).get("eval_loss")
        atomic_write_json(output_dir / METRICS_FILE, metrics)
        names = " + ".join(info.get("data", {}).get("datasets") or {}) or "PsyDTCorpus"
        plot_losses(history, plot, f"{Path(args.model_local_dir).name} + LoRA on {names}")
        info["metrics"] = {k: metrics.get(k) for k in ("final_train_loss", "final_eval_loss")}
    adapter_dir = output_dir / ADAPTER_DIR
    save_adapter(trainer, adapter_dir, info, extra_files=[plot])
    if main_rank:
        print(f"[完成] LoRA adapter 已保存到 {adapter_dir}；指标 {output_dir / METRICS_FILE}；损失曲线 {plot}", flush=True)
