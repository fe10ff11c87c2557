"""The run record: what a finished training run says about itself, in `psydt_run.json` beside the adapter.

Written once, by training, when the adapter is saved; read once per start by inference, export and the model
card (`RunRecord.read`). Its settings are the typed training settings grouped by the object they came from
(model, data, samples, lora, trainer, tracking, preference), never the command line's namespace, so renaming a
flag does not change the file. Files written before this type existed (a flat "args" dict of flag names) still
load: their flags become the settings and every other field is read as it was.
"""
import json
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

RUN_FILE = "psydt_run.json"  # written next to the adapter by training, read by inference, export and the card
FORMAT = 2  # 1: the flat "args" of the first releases (no "format" key); 2: grouped typed settings


@dataclass(frozen=True)
class BaseModel:
    """The base model the adapter was trained on: the folder it was loaded from, what must match when it is
    loaded onto another, and its hub id only when the weights came from that hub (hub.model_source)."""
    path: str | None = None
    repo: str | None = None  # None: a local folder of unknown origin (never the unused --model_repo default)
    signature: dict = field(default_factory=dict)
    hub: str | None = None


@dataclass(frozen=True)
class RunRecord:
    settings: dict = field(default_factory=dict)  # {group: {field: value}} of the typed settings
    base_model: BaseModel = field(default_factory=BaseModel)
    stage: str = "sft"  # sft | dpo
    preference: dict | None = None  # the preference stage: loss, beta, ftx, simpo_gamma, reference (None for SFT)
    parent: dict | None = None  # the adapter a preference run continued: its folder, stage and datasets
    prompt_format: dict = field(default_factory=dict)
    system_prompt: str | None = None  # the most common system prompt of the training dialogues
    system_prompts: dict = field(default_factory=dict)  # each dataset's
    data: dict = field(default_factory=dict)  # data statistics (counts only, never dialogue text)
    metrics: dict = field(default_factory=dict)
    trained: dict = field(default_factory=dict)  # what was trained: {"steps", "epochs"} (the whole run, resumes included)
    versions: dict = field(default_factory=dict)
    created: str | None = None

    def setting(self, name: str, default=None):
        """One setting by its field name, whichever group holds it (field names are unique across groups)."""
        for group in self.settings.values():
            if isinstance(group, dict) and name in group:
                return group[name]
        return default

    def flat_settings(self) -> dict:
        out = {}
        for group in self.settings.values():
            if isinstance(group, dict):
                out.update(group)
        return out

    @property
    def heldout_file(self) -> str | None:
        """The dialogues training held out with --val_size, as test items (the batch test's default)."""
        return (self.data.get("heldout") or {}).get("file")

    @property
    def datasets(self) -> dict:
        return self.data.get("datasets") or {}

    @property
    def all_datasets(self) -> dict:
        """The datasets the adapter learned from: its own run's, and those of the adapter it continued."""
        return {**((self.parent or {}).get("datasets") or {}), **self.datasets}

    @property
    def base_repo(self) -> str | None:
        """The base model's hub id where the record knows it: format 2 only when the weights came from the hub;
        format 1 recorded the --model_repo flag, whatever was loaded."""
        if "flags" in self.settings:
            return self.base_model.repo or self.settings["flags"].get("model_repo")
        return self.base_model.repo

    def as_parent(self, adapter_dir) -> dict:
        return {"adapter": str(adapter_dir), "stage": self.stage, "datasets": self.all_datasets,
                "system_prompt": self.system_prompt}

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, raw: dict) -> "RunRecord":
        values = {}
        for f in fields(cls):
            value = raw.get(f.name)
            if value is None and f.default_factory is not MISSING:  # absent or null: the empty default
                value = f.default_factory()
            values[f.name] = f.default if value is None else value
        if "settings" not in raw and isinstance(raw.get("args"), dict):  # format 1: the flags as they were
            values["settings"] = {"flags": dict(raw["args"])}
        base = values["base_model"] if isinstance(values["base_model"], dict) else {}
        values["base_model"] = BaseModel(base.get("path"), base.get("repo"), base.get("signature") or {}, base.get("hub"))
        return cls(**values)

    @classmethod
    def read(cls, adapter_dir) -> "RunRecord | None":
        """The record beside an adapter; None when there is none or it cannot be read (an adapter from elsewhere)."""
        path = Path(adapter_dir) / RUN_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return cls.from_json(raw) if isinstance(raw, dict) else None


def settings_dict(*groups) -> dict:
    """{group name: its fields} of typed settings objects (a frozen dataclass each, named by `.group`)."""
    out = {}
    for g in groups:
        if g is not None and is_dataclass(g):
            out[getattr(g, "group", type(g).__name__)] = {k: _plain(v) for k, v in asdict(g).items()}
    return out


def _plain(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return value
