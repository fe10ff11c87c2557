"""The model card (README.md of the merged folder): where the model comes from, how it was trained,
what the run measured, what it is for, and where to get help in a crisis."""
import json
from pathlib import Path

from psydt_lora.safety.resources import load_resources

# (the flag a user knows, the settings group and field that hold it; format-1 records hold the flags themselves)
TRAINING_SETTINGS = (("sample_mode", "samples", "mode"), ("max_length", "samples", "max_length"),
                     ("max_train_items", "data", "max_train_items"), ("num_train_epochs", "trainer", "num_train_epochs"),
                     ("max_steps", "trainer", "max_steps"), ("learning_rate", "trainer", "learning_rate"),
                     ("lr_scheduler_type", "trainer", "lr_scheduler_type"),
                     ("per_device_train_batch_size", "trainer", "per_device_train_batch_size"),
                     ("gradient_accumulation_steps", "trainer", "gradient_accumulation_steps"), ("lora_r", "lora", "r"),
                     ("lora_alpha", "lora", "alpha"), ("lora_dropout", "lora", "dropout"),
                     ("target_modules", "lora", "target_modules"), ("dtype", "model", "dtype"), ("seed", "trainer", "seed"),
                     ("stage", None, "stage"), ("pref_loss", "preference", "loss"), ("pref_beta", "preference", "beta"))
DATA_KEYS = ("dialogues", "samples", "tokens", "supervised_tokens")


PSYDT = "YIRONGCHEN/PsyDTCorpus"


def front_matter(base_repo: str | None, hub_datasets: list) -> str:
    """`base_model` only when the base's hub id is known (a hub id is what the key means; a folder is not one)."""
    meta = {"license": "apache-2.0", "language": ["zh"], **({"base_model": base_repo} if base_repo else {}),
            "datasets": hub_datasets, "library_name": "transformers", "pipeline_tag": "text-generation",
            "tags": ["qwen3", "lora", "psychological-counseling", "psydt-lora"]}
    # YAML is a superset of JSON: one JSON value per key is valid front matter
    return "---\n" + "".join(f"{k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in meta.items()) + "---\n"


def help_lines() -> list[str]:
    resources, _ = load_resources()
    return [f"- **{r['name']}**：{r['contact']}（{r.get('note', '')}）" for r in resources["resources"]]


def _table(rows) -> list[str]:
    return ["| 项 | 值 |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]


def data_lines(record) -> tuple[list, list, str]:
    """(hub ids for the front matter, the card's data lines, a short name) from the datasets the run recorded;
    PsyDTCorpus when it recorded none (runs before several datasets existed train on it alone)."""
    rows = list(record.all_datasets.values()) if record else []
    if not rows:
        dataset = (record.setting("dataset_repo") if record else None) or PSYDT
        return [dataset], [f"- 数据：`{dataset}`（PsyDTCorpus，中文多轮心理咨询对话，Apache-2.0）"], "PsyDTCorpus"
    lines = [f"- 数据：`{r['name']}`（{r.get('location', '')}，格式 {r.get('format', '?')}）" for r in rows]
    lines.append("- 各数据集的许可以其来源为准；发布或使用本模型时请同时遵守它们。")
    psydt = [PSYDT] if any("PsyDTCorpus" in f"{r['name']} {r.get('location', '')}" for r in rows) else []
    return psydt, lines, " + ".join(r["name"] for r in rows)


def settings_rows(record) -> list[tuple]:
    """(flag, value) of the settings worth a reader's eye, whichever format the record is in: what was trained
    first (steps and epochs, where the record says), then the flags -- of --num_train_epochs and --max_steps
    only the one that decided the length."""
    if record is None:
        return []
    flags = record.settings.get("flags", {})  # a format-1 record
    rows = [(f"实际训练{label}", record.trained[key]) for key, label in (("steps", "步数"), ("epochs", "轮数"))
            if record.trained.get(key) is not None]
    for flag, group, name in TRAINING_SETTINGS:
        if group is None:
            value = record.stage if flags == {} else flags.get(flag)
        else:
            value = record.settings.get(group, {}).get(name, flags.get(flag))
        if value is not None and not unused_length_flag(flag, value, record.setting("max_steps")):
            rows.append((flag, ",".join(value) if isinstance(value, list) else value))
    return rows


def unused_length_flag(flag: str, value, max_steps) -> bool:
    """--num_train_epochs when --max_steps set the length; --max_steps -1 (the length came from the epochs)."""
    steps_decide = isinstance(max_steps, (int, float)) and max_steps > 0
    return (flag == "num_train_epochs" and steps_decide) or (flag == "max_steps" and not steps_decide)


def base_line(base_repo, base: str, record) -> str:
    """The base as loaded: its folder, and the hub id only where the record knows the weights came from there."""
    if not base_repo:
        return f"- 基础模型：本地文件夹 `{base}`（不是从模型库下载的，来源未记录）"
    hub = f"，从 {record.base_model.hub} 下载" if record and record.base_model.hub else ""
    return f"- 基础模型：`{base_repo}`{hub}，本地路径 `{base}`"


def model_card(record, *, base: str, adapter: str, system_prompt, settings, recipes) -> str:
    """Markdown with YAML front matter. `record` is the adapter's RunRecord (None when it has none)."""
    base_repo = record.base_repo if record else None
    hub_datasets, data, data_name = data_lines(record)
    train_data = (record.data.get("train") or {}) if record else {}
    metrics = (record.metrics or {}) if record else {}
    out = [front_matter(base_repo, hub_datasets), f"# {base_repo or Path(base).name} + {data_name} LoRA（已合并）", "",
           "> **这不是心理咨询师。** 模型的回复不能替代专业心理咨询、诊断或治疗。如果你或身边的人正处于危机中，请立即求助：", ">"]
    out += [f"> {line}" for line in help_lines()] + ["",
            "## 来源", "",
            base_line(base_repo, base, record),
            *data,
            f"- LoRA adapter：`{adapter}`，用 PsyDT-LoRA 训练后合并进权重（safetensors）", "",
            "## 训练设置", ""]
    rows = settings_rows(record)
    out += (_table(rows) if rows else ["（adapter 旁没有 psydt_run.json，训练设置未知）"])
    out += ["", "## 本次训练的指标", ""]
    rows = [(f"训练数据 {k}", train_data[k]) for k in DATA_KEYS if k in train_data]
    rows += [(k, metrics[k]) for k in ("final_train_loss", "final_eval_loss") if metrics.get(k) is not None]
    out += (_table(rows) if rows else ["（adapter 旁没有 psydt_run.json，指标未知）"]) + [""]
    out += ["## 提示词格式", "",
            "- 训练时每条回复前都有一个空的思考块（`enable_thinking=False`）。本文件夹的 chat template 默认就是这样："
            "不传任何参数的 `apply_chat_template(messages, add_generation_prompt=True)` 得到的正是训练时的提示词；"
            "显式传 `enable_thinking=True` 仍可开启思考（模型没有在这种格式上训练过）。",
            "- 对话里没有 system 消息时，chat template 会加上训练数据中的系统提示词（见下）；对话自带 system 消息时用它自己的。",
            f"- `generation_config.json`：{settings.describe()}（停止符 `<|im_end|>`）。", ""]
    if system_prompt:
        out += ["<details><summary>默认系统提示词</summary>", "", "```text", system_prompt, "```", "", "</details>", ""]
    out += ["## 用法", "", "```bash"] + list(recipes) + ["```", "",
            "## 预期用途与限制", "",
            "- 用于心理咨询对话技术的研究和教学；不用于真实来访者的诊断、治疗或危机干预。",
            "- 模型可能给出不准确、不恰当甚至有害的回复；面向用户部署时请加上危机语言检测和人工转介"
            "（PsyDT-LoRA 的 `--mode serve` 自带这一层）。", ""]
    return "\n".join(out)
