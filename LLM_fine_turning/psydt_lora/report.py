"""The batch test's human-readable outputs: a Markdown report and a bar chart, next to the JSON."""
import os
from pathlib import Path

from .files import atomic_write_text, pyplot, save_figure
from .metrics import HIGHER_IS_BETTER, LABELS

TABLE_KEYS = ("bleu4_char", "bleu4_word", "rouge1", "rouge2", "rougeL", "chrf", "distinct1", "distinct2",
              "mean_length", "empty_rate", "ppl", "ref_loss")
CHART_KEYS = ("bleu4_char", "bleu4_word", "rouge1", "rouge2", "rougeL", "chrf")
MODEL_NAMES = {"lora": "LoRA 微调后", "base": "基础模型"}


def _fmt(v):
    if v is None:
        return "—"
    return f"{v:.4f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:.2f}" if isinstance(v, float) else str(v))


def _table(summaries: dict) -> list[str]:
    models = list(summaries)
    lines = ["| 指标 | " + " | ".join(MODEL_NAMES.get(m, m) for m in models) + " |",
             "| --- | " + " | ".join("---:" for _ in models) + " |"]
    for k in TABLE_KEYS:
        if not any(k in summaries[m] for m in models):
            continue
        arrow = {False: " ↓", None: ""}.get(HIGHER_IS_BETTER.get(k, True), " ↑")
        lines.append(f"| {LABELS[k]}{arrow} | " + " | ".join(_fmt(summaries[m].get(k)) for m in models) + " |")
    return lines


def plot_metrics(summaries: dict, path: Path) -> None:
    models = list(summaries)
    keys = [k for k in CHART_KEYS if all(k in summaries[m] for m in models)]
    fig, ax = pyplot().subplots(figsize=(8, 4), dpi=120)
    width = 0.8 / max(len(models), 1)
    for i, m in enumerate(models):
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, [summaries[m][k] for k in keys], width=width, label={"lora": "LoRA", "base": "base"}.get(m, m))
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(keys))])
    ax.set_xticklabels(keys)
    ax.set_ylabel("score (0-100)")
    ax.set_ylim(0, 115)
    title = "PsyDTCorpus test: " + " vs ".join({"lora": "LoRA", "base": "base"}.get(m, m) for m in models)
    if all("ppl" in summaries[m] for m in models):
        title += "   (ppl: " + ", ".join(f"{m} {summaries[m]['ppl']:.2f}" for m in models) + ")"
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def write_report(report: dict, json_path: Path, loss_curve: Path | None = None, examples: int = 3) -> tuple[Path, Path]:
    """Markdown report + PNG chart beside the JSON; returns their paths."""
    json_path = Path(json_path)
    md_path = json_path.with_suffix(".md")
    png_path = json_path.with_suffix(".png")
    ev = report["metrics"]
    plot_metrics(ev["overall"], png_path)
    meta = report["meta"]
    lines = [
        "# PsyDTCorpus 批量测试报告", "",
        f"- 基础模型：`{meta.get('model')}`", f"- LoRA adapter：`{meta.get('adapter')}`",
        f"- 测试文件：`{meta.get('test_file')}`，条目数：{meta.get('items')}",
        f"- 生成参数：`{meta.get('generation')}`", f"- 完成时间：{meta.get('finished')}", "",
        "## 总体指标", "", *_table(ev["overall"]), "",
        f"![指标对比]({png_path.name})", "",
        "↑ 越高越好，↓ 越低越好。参考回复困惑度（ppl）最敏感：它直接衡量模型对测试集真实咨询师回复的拟合程度，"
        "不受采样随机性影响；BLEU/ROUGE/chrF 衡量与参考回复的字面重合度，心理咨询回复可以很好却与参考用词不同，"
        "所以只宜用于比较（微调前后、不同设置），不宜看绝对值。distinct 衡量回复的多样性。", "",
    ]
    if loss_curve is not None and Path(loss_curve).is_file():
        rel = os.path.relpath(loss_curve, md_path.parent)
        lines += ["## 训练损失曲线", "", f"![训练损失曲线]({rel})", ""]
    lines += ["## 按标签（normalizedTag）", ""]
    for tag, per_model in ev["by_tag"].items():
        n = next(iter(per_model.values())).get("items", 0)
        lines += [f"### {tag}（{n} 条）", "", *_table(per_model), ""]
    lines += ["## 示例", ""]
    results = [r for r in report["results"] if r.get("reference") is not None]
    step = max(1, len(results) // max(examples, 1))
    for r in results[::step][:examples]:
        lines += [f"### 条目 {r['index']}（id={r['id']}，{r.get('normalizedTag') or '无标签'}，历史 {r['history_turns']} 轮）", ""]
        for m in r.get("history_tail", []):
            who = "来访者" if m["role"] == "user" else "咨询师"
            lines.append(f"> **{who}**：{m['content']}")
        lines += ["", f"- **参考回复**：{r['reference']}"]
        if "base_response" in r:
            lines.append(f"- **基础模型**：{r['base_response'] or '（空）'}")
        lines += [f"- **{'LoRA' if meta.get('adapter') else '模型'}**：{r['response'] or '（空）'}", ""]
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return md_path, png_path
