"""What a finished run leaves: the adapter folder (written whole or not at all), its run JSON, the loss history."""
import platform
import shutil
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from psydt_lora.files import atomic_write_json
from psydt_lora.models import base_model_signature
from psydt_lora.run_record import RUN_FILE


ADAPTER_DIR = "lora_adapter"


METRICS_FILE = "metrics.json"


LOSS_PLOT = "loss_curve.png"


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

