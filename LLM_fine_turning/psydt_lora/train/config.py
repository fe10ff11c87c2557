"""The training settings, typed: what train_cli parses the command line into and the train wing receives.

Each object is frozen and holds one part of the job; a component takes the objects it needs, never the
command line. `group` names each object in the run record (`psydt_run.json`, run_record.settings_dict).
The preference stage adds its own object (`PreferenceConfig`, train/preference.py) beside these.
"""
from dataclasses import dataclass, field
from pathlib import Path

from psydt_lora.data.samples import SampleSettings

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STAGES = ("sft", "dpo")
SFT_LEARNING_RATE = 1e-4
PREFERENCE_LEARNING_RATE = 5e-6  # LLaMA-Factory's DPO examples (LoRA); preference steps move far more per update


@dataclass(frozen=True)
class ModelConfig:
    group = "model"
    repo: str = "Qwen/Qwen3-1.7B"  # the hub id
    local_dir: str = "./Qwen/Qwen3-1.7B"  # fetched here when incomplete
    adapter_path: str | None = None  # preference stage: the SFT adapter the policy continues
    hub: str = "modelscope"
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32
    attn_implementation: str = "sdpa"
    load_in_4bit: bool = False  # QLoRA
    gradient_checkpointing: bool = True
    trust_remote_code: bool = False


@dataclass(frozen=True)
class DataConfig:
    group = "data"
    dataset_repo: str = "YIRONGCHEN/PsyDTCorpus"
    dataset_dir: str = "./data/PsyDTCorpus"
    train_files: tuple = ()  # --train_file entries (paths, folders, hub:ids); () = PsyDTCorpus's train file
    dataset_spec: str | None = None
    system_prompt: str | None = None  # None: the built-in one; "": none
    val_size: float = 0  # < 1: a share of the dialogues; >= 1: a count
    eval_file: str | None = None
    max_train_items: int = 300  # per dataset; <= 0: all
    max_eval_items: int = 20  # <= 0: all
    do_eval: bool = True
    sample_cache: bool = True
    sample_cache_dir: str | None = None
    seed: int = 42  # the held-out split and the mix order


@dataclass(frozen=True)
class LoraSettings:
    group = "lora"
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple = DEFAULT_TARGET_MODULES


@dataclass(frozen=True)
class TrainerConfig:
    """What becomes the Trainer's TrainingArguments (train/trainer.training_arguments), and the run's own knobs."""
    group = "trainer"
    output_dir: str = "./output/qwen3-1_7b-psydt-lora"
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    gradient_accumulation_steps: int = 4
    num_train_epochs: float = 2
    max_steps: int = -1
    learning_rate: float = SFT_LEARNING_RATE
    lr_scheduler_type: str = "linear"
    warmup_steps: float = 0  # < 1: a share of the steps
    save_steps: int = 400
    save_total_limit: int | None = None
    logging_steps: int = 10
    eval_steps: int = 200
    seed: int = 42
    group_by_length: bool = False
    packing: bool = False  # several samples a row (train/rows.py)
    deepspeed: str | None = None
    resume_from_checkpoint: str = "auto"  # auto | none | a checkpoint folder

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)


@dataclass(frozen=True)
class TrackingConfig:
    group = "tracking"
    report_to: tuple = ("swanlab",)  # Trainer reporters; swanlab through its own callback
    swanlab_project: str = "qwen3-psydt-lora"
    swanlab_run_name: str | None = None
    swanlab_mode: str = "auto"


@dataclass(frozen=True)
class TrainConfig:
    """The whole run: every part's settings (the preference stage's too, when it is one)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    samples: SampleSettings = field(default_factory=SampleSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    preference: object = None  # train/preference.PreferenceConfig for --stage dpo; None for SFT

    @property
    def stage(self) -> str:
        return "sft" if self.preference is None else "dpo"

    def parts(self) -> tuple:
        return (self.model, self.data, self.samples, self.lora, self.trainer, self.tracking, self.preference)
