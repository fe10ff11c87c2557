"""What a finished run leaves: the adapter folder (written whole or not at all), its run JSON, the loss history."""
import os
import platform
import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.files import atomic_write_json, write_dir
from psydt_lora.hub import model_source
from psydt_lora.models import base_model_signature
from psydt_lora.run_record import RUN_FILE, BaseModel, RunRecord, settings_dict


ADAPTER_DIR = "lora_adapter"


METRICS_FILE = "metrics.json"


LOSS_PLOT = "loss_curve.png"


def save_adapter(trainer, adapter_dir: Path, record: RunRecord, extra_files=()) -> None:
    """Adapter (safetensors) + tokenizer/chat template + run JSON, written to a folder beside
    `adapter_dir` and renamed into place, so `adapter_dir` is never half-written.

    Called on every rank: the weights go through the Trainer's own save, which gathers parameters that
    DeepSpeed ZeRO-3 or FSDP partitioned across ranks and writes the tokenizer (its processing class);
    the main process adds the rest and renames the folder."""
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
        atomic_write_json(folder / RUN_FILE, record.to_json())
        for f in extra_files:
            if Path(f).is_file():
                shutil.copy2(f, folder / Path(f).name)

    write_dir(adapter_dir, fill, tmp=tmp)


def run_record(config, base_config, prompt_fmt: dict, system_prompt, system_prompts: dict, data_stats: dict,
               metrics: dict, trained: dict) -> RunRecord:
    """The record a finished run leaves beside its adapter: the typed settings, never the command line. The base
    is the folder loaded; its hub id only when the weights came from the hub (--model_repo is otherwise unused)."""
    pref = config.preference
    source = model_source(config.model.local_dir) or {}
    return RunRecord(
        settings=settings_dict(*config.parts()),
        base_model=BaseModel(str(config.model.local_dir), source.get("repo"), base_model_signature(base_config),
                             source.get("hub")),
        stage=config.stage,
        preference=None if pref is None else settings_dict(pref)[pref.group],
        parent=parent_of(config.model.adapter_path),
        prompt_format=prompt_fmt, system_prompt=system_prompt, system_prompts=system_prompts, data=data_stats,
        metrics=metrics, trained=trained, versions=library_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def trained_amount(state) -> dict:
    """The optimizer steps and epochs the whole run trained (a resumed or extended run's included), from the
    Trainer's state."""
    return {"steps": state.global_step, "epochs": round(state.epoch or 0.0, 4)}


def parent_of(adapter_dir) -> dict | None:
    """What a continued adapter's record says about where it came from (None: a run from the base)."""
    if not adapter_dir:
        return None
    record = RunRecord.read(adapter_dir)
    return record.as_parent(adapter_dir) if record else {"adapter": str(adapter_dir)}


def preflight(output_dir: Path, need_bytes: int) -> None:
    """Fail before loading weights for reasons knowable now: unwritable or full output folder."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write_test.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise PsyDTError(f"输出目录 {output_dir} 不可写：{err.strerror}。请换一个 --output_dir。") from None
    free = shutil.disk_usage(output_dir).free
    if free < need_bytes:
        raise PsyDTError(
            f"输出目录 {output_dir} 所在磁盘只剩 {free / 2**20:.0f} MiB，估计需要 {need_bytes / 2**20:.0f} MiB"
            "（检查点 + adapter）。请清理磁盘、换 --output_dir 或设置 --save_total_limit。"
        )


PREFERENCE_SERIES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def loss_history(log_history) -> dict:
    """(step, value) series of the losses, and of a preference run's rewards, margins and accuracy."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    history = {"train": train, "eval": evals}
    for key in PREFERENCE_SERIES:
        for name in (key, f"eval_{key}"):
            series = [(h["step"], h[name]) for h in log_history if name in h and "step" in h]
            if series:
                history[name] = series
    return history


def final_metrics(history: dict) -> dict:
    """The run record's metrics: the last value of each series (losses; rewards, margins, accuracy)."""
    out = {"final_train_loss": history["train"][-1][1] if history["train"] else None,
           "final_eval_loss": history["eval"][-1][1] if history["eval"] else None}
    for name, series in history.items():
        if name not in ("train", "eval"):
            out[f"final_{name.replace('/', '_')}"] = series[-1][1]
    return out


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

