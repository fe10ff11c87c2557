"""Trainer checkpoints: which are whole (in each launcher's layout), which to resume from."""
import json
from dataclasses import dataclass
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.files import atomic_write_json
from psydt_lora.hub import safetensors_complete
from psydt_lora.run_record import RunRecord
from psydt_lora.train.outputs import ADAPTER_DIR

STAGE_FILE = "psydt_stage.json"  # which stage (sft / dpo) an output folder's checkpoints belong to


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


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def checkpoint_step(path) -> int:
    """The optimizer step a (complete) checkpoint was saved at."""
    return int(json.loads((Path(path) / "trainer_state.json").read_text("utf-8")).get("global_step", 0))


def checkpoint_plan(path) -> int | None:
    """The optimizer steps the run that saved a (complete) checkpoint had planned."""
    return json.loads((Path(path) / "trainer_state.json").read_text("utf-8")).get("max_steps")


def load_checkpoint_adapter(model, checkpoint) -> None:
    """Put a checkpoint's LoRA weights into `model` (for a run that finished training but not its save)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(checkpoint) / "adapter_model.safetensors")))



@dataclass(frozen=True)
class ResumePlan:
    """Where a run starts: the one place that decides whether the output folder already holds it finished."""
    checkpoint: str | None  # the checkpoint to resume from (None: from scratch)
    at_last_step: bool  # that checkpoint is the planned last step: training is over
    adapter_saved: bool  # ... and the final adapter is already there, whole

    @property
    def done(self) -> bool:
        """Nothing left to do: trained to the last step and saved."""
        return self.at_last_step and self.adapter_saved


def plan_resume(output_dir, requested: str, steps: int) -> ResumePlan:
    """`requested` is --resume_from_checkpoint (auto / none / a path); `steps` the planned optimizer steps."""
    checkpoint = find_checkpoint(output_dir, requested)
    at_last = checkpoint is not None and checkpoint_step(checkpoint) >= steps
    adapter = Path(output_dir) / ADAPTER_DIR / "adapter_model.safetensors"
    return ResumePlan(checkpoint, at_last, at_last and safetensors_complete(adapter))


def stage_of(output_dir) -> str | None:
    """The stage whose checkpoints or adapter an output folder holds (None: nothing yet). Folders written
    before the preference stage existed hold SFT."""
    out = Path(output_dir)
    try:
        return json.loads((out / STAGE_FILE).read_text("utf-8"))["stage"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    record = RunRecord.read(out / ADAPTER_DIR)
    if record is not None:
        return record.stage
    return "sft" if out.is_dir() and any(out.glob("checkpoint-*")) else None


def check_output_stage(output_dir, stage: str) -> None:
    """A preference run must not resume from, or overwrite, an SFT run's folder (nor the other way round)."""
    found = stage_of(output_dir)
    if found is not None and found != stage:
        raise PsyDTError(f"--output_dir {output_dir} 里已经是 {found} 的训练（检查点或 adapter）；这次是 --stage {stage}，"
                         "会把它当成自己的检查点续训，或覆盖它的 adapter。请换一个 --output_dir。")


def mark_stage(output_dir, stage: str) -> None:
    atomic_write_json(Path(output_dir) / STAGE_FILE, {"stage": stage})
