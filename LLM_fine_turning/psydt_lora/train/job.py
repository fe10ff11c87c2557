"""One training run, step by step: set up the model and the Trainer, train, save what a finished run leaves.

The train wing's rooms: config (the typed settings), training_data (datasets read, samples built), lora (the
model), trainer (the Trainer, its arguments and loss wiring), sample_dataset (the training set, --packing rows),
progress (what the run says), signals and ranks (stopping and leaving), checkpoints (what is whole, where a run
resumes), tracking (SwanLab), outputs (adapter, run record, loss history), loss (the LM head at supervised positions)."""
import os
from dataclasses import dataclass
from pathlib import Path

from psydt_lora.data.preference_samples import PreferenceDataset
from psydt_lora.files import atomic_write_json
from psydt_lora.models import base_model_signature, local_cuda, pick_device, pick_dtype, weights_identity
from psydt_lora.plots import plot_losses
from psydt_lora.train.checkpoints import ResumePlan
from psydt_lora.train.config import TrainConfig
from psydt_lora.train.lora import build_model
from psydt_lora.train.outputs import (ADAPTER_DIR, LOSS_PLOT, METRICS_FILE, final_metrics, loss_history, run_record,
                                      save_adapter, trained_amount)
from psydt_lora.train.preference import cached_reference_logps, reference_identity, reference_logps
from psydt_lora.train.progress import device_lines, run_summary
from psydt_lora.train.ranks import finish_distributed, is_main_process
from psydt_lora.train.training_data import say
from psydt_lora.train.signals import ignore_sigterm_while_leaving
from psydt_lora.train.trainer import build_trainer, final_eval, run


@dataclass(frozen=True)
class TrainingRun:
    """What one run trains on and with: its settings, the model folder, the tokenizer, the training
    dialogues (for the run record's system prompts) and the data statistics."""
    config: TrainConfig
    model_dir: Path
    tokenizer: object
    data_stats: dict  # counts only: SwanLab's config and the run record hold them
    prompt_format: dict
    system_prompt: str | None  # the training contexts' most common one (chat, test and serve default to it)
    system_prompts: dict  # each dataset's
    cache_dir: Path | None = None  # the preference stage's reference log-probs are cached here


def train(job: TrainingRun, train_set, eval_set, *, resume: ResumePlan, steps: int) -> int:
    """Set up -> train -> save; the exit code (130 / 143 when a signal stopped it after a checkpoint)."""
    from transformers import set_seed

    config = job.config
    set_seed(config.trainer.seed)
    device = pick_device("auto")
    if device == "cpu":  # the Trainer imports DeepSpeed whenever it is installed; told the device, it does not guess aloud
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    dtype = pick_dtype(config.model.dtype, device)
    if is_main_process():
        print("\n".join(device_lines(device, dtype, config.model.dtype)), flush=True)
    model, base_config = build_model(config.model, config.lora, job.model_dir, dtype)
    if config.preference is not None:  # the reference log-probs, once, before the first step
        to_training_device(model, device, config.model.load_in_4bit)
        train_set, eval_set = with_reference(job, model, base_config, dtype, train_set, eval_set)
    trainer, collator, stop = build_trainer(config, model, job.tokenizer, train_set, eval_set, job.data_stats, device, dtype)
    if is_main_process():
        print("\n".join(run_summary(trainer, job.data_stats["train"]["tokens"], config, steps)), flush=True)
    result = run(trainer, stop, resume, steps)
    if stop.exit_code:
        ignore_sigterm_while_leaving()
        if trainer.is_world_process_zero():
            saved = config.trainer.output_path / f"checkpoint-{trainer.state.global_step}"  # the Trainer's folder name
            print(f"[中断] 已保存检查点 {saved}。用同样的命令重新运行即可继续训练。", flush=True)
        finish_distributed()
        return stop.exit_code
    metrics = {"train": result.metrics if result else {}, "padding_share": round(collator.padding_share(), 4)}
    if eval_set is not None:
        metrics["eval"] = final_eval(trainer)
    save_outputs(job, trainer, metrics, base_config, collator.padding_share())
    finish_distributed()
    return 0


def save_outputs(job: TrainingRun, trainer, metrics, base_config, padding_share) -> None:
    """Metrics, loss curve and run record from the main process; the adapter through every rank."""
    config = job.config
    output_dir = config.trainer.output_path
    plot = output_dir / LOSS_PLOT
    main_rank = trainer.is_world_process_zero()
    if main_rank:
        hint = "（--group_by_length 可以减少）" if padding_share > 0.05 and not config.trainer.group_by_length else ""
        print(f"[训练] padding 占比 {100 * padding_share:.1f}%{hint}", flush=True)
        history = loss_history(trainer.state.log_history)
        metrics["loss_history"] = history
        metrics.update(final_metrics(history))
        metrics["final_eval_loss"] = metrics.get("eval", {}).get("eval_loss")
        atomic_write_json(output_dir / METRICS_FILE, metrics)
        names = " + ".join(job.data_stats.get("datasets") or {}) or "PsyDTCorpus"
        plot_losses(history, plot, f"{Path(config.model.local_dir).name} + LoRA on {names}")
    record = run_record(config, base_config, job.prompt_format, job.system_prompt, job.system_prompts, job.data_stats,
                        {k: v for k, v in metrics.items() if k.startswith("final_")}, trained_amount(trainer.state))
    adapter_dir = output_dir / ADAPTER_DIR
    save_adapter(trainer, adapter_dir, record, extra_files=[plot])
    if main_rank:
        print(f"[完成] LoRA adapter 已保存到 {adapter_dir}；指标 {output_dir / METRICS_FILE}；损失曲线 {plot}", flush=True)


def with_reference(job: TrainingRun, model, base_config, dtype, train_trees, eval_trees):
    """The preference datasets: each tree with its leaves' reference log-probs (none for ORPO / SimPO),
    computed once on the device training uses and cached under the reference's identity. Every process
    computes what the cache does not hold (no process waits on another at a barrier); the main one writes it."""
    pref, pad = job.config.preference, job.tokenizer.pad_token_id
    m = job.config.model
    identity = {**reference_identity(base_model_signature(base_config), pref.reference, m.adapter_path),
                "weights": weights_identity(job.model_dir), "dtype": str(dtype), "load_in_4bit": m.load_in_4bit}

    def reference(trees):
        if not pref.needs_reference or not trees:
            return None
        return cached_reference_logps(job.cache_dir, trees, identity,
                                      lambda: reference_logps(model, trees, pad, pref.reference), say=say,
                                      write=is_main_process())

    train_set = PreferenceDataset(train_trees, reference(train_trees))
    return train_set, (PreferenceDataset(eval_trees, reference(eval_trees)) if eval_trees else None)


def to_training_device(model, device: str, quantized: bool):
    """The model on the GPU this process trains on before the reference pass (the Trainer would only move
    it later); a 4-bit model is already placed by its device map."""
    if device == "cuda" and not quantized:
        model.to(f"cuda:{local_cuda()}")
