"""The batch test's human-readable outputs: a Markdown report and a bar chart, next to the JSON."""
import html
import os
import re
from pathlib import Path

from psydt_lora.files import atomic_write_text
from psydt_lora.plots import pyplot, save_figure
from psydt_lora.inference.generation import describe_generation
from psydt_lora.evaluation.metrics import HIGHER_IS_BETTER, LABELS

TABLE_KEYS = ("bleu4_char", "bleu4_word", "rouge1", "rouge2", "rougeL", "chrf", "distinct1", "distinct2",
              "mean_length", "empty_rate", "ppl", "ref_loss")
CHART_KEYS = ("bleu4_char", "bleu4_word", "rouge1", "rouge2", "rougeL", "chrf")
MODEL_NAMES = {"lora": "LoRA 微调后", "base": "基础模型"}
SHORT_NAMES = {"lora": "LoRA", "base": "base"}
CONSOLE_KEYS = (("bleu4_char", "BLEU-4(字)"), ("rougeL", "ROUGE-L"), ("chrf", "chrF"), ("ppl", "ppl"))
EMPTY_WARNING = 0.2  # share of empty replies that deserves a warning of its own


def md_text(text: str) -> str:
    """Text that stays on one Markdown line and shows as typed: HTML and Markdown marks escaped,
    line breaks as <br>."""
    text = html.escape(text or "", quote=False)
    text = re.sub(r"([\\`*_\[\]#|~])", r"\\\1", text)
    return "<br>".join(text.replace("\r\n", "\n").split("\n"))


def _signed(v: float) -> str:
    return f"{v:+.2f}" if abs(v) >= 0.01 else f"{v:+.4f}"


def summary_lines(report: dict) -> list[str]:
    """The console summary of a batch test: per model the main scores, empty-reply rate and mean length,
    the LoRA-minus-base difference, and a warning when many replies are empty."""
    overall = report.get("metrics", {}).get("overall") or {"lora" if report["meta"].get("adapter") else "base":
                                                           _plain_summary(report["results"])}
    lines = []
    for name, s in overall.items():
        scores = "，".join(f"{label} {s[k]:.2f}" for k, label in CONSOLE_KEYS if k in s)
        lines.append(f"[指标] {MODEL_NAMES.get(name, name)}：{scores + '，' if scores else ''}"
                     f"空回复 {100 * s['empty_rate']:.1f}%，平均长度 {s['mean_length']:.1f} 字")
    if {"lora", "base"} <= set(overall):
        lo, ba = overall["lora"], overall["base"]
        keys = [*CONSOLE_KEYS, ("empty_rate", "空回复率"), ("mean_length", "平均长度")]
        diffs = "，".join(f"{label} {_signed(lo[k] - ba[k])}" for k, label in keys if k in lo and k in ba)
        lines.append(f"[指标] 差值（LoRA − 基础模型）：{diffs}")
    for name, s in overall.items():
        if s["empty_rate"] >= EMPTY_WARNING:
            lines.append(f"[警告] {MODEL_NAMES.get(name, name)}有 {100 * s['empty_rate']:.0f}% 的回复是空的："
                         "检查 adapter 是否训练正常、--max_new_tokens 是否太小、--enable_thinking 是否与训练一致。")
    return lines


def _plain_summary(results) -> dict:
    """Empty-reply rate and mean length when there are no references to score against."""
    texts = [r.get("response") or "" for r in results]
    n = max(len(texts), 1)
    return {"empty_rate": sum(1 for t in texts if not t.strip()) / n, "mean_length": sum(map(len, texts)) / n}


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
    """Overlap scores on an axis scaled to the data (realistic scores are small), reference perplexity
    on its own axis beside them."""
    models = list(summaries)
    keys = [k for k in CHART_KEYS if all(k in summaries[m] for m in models)]
    with_ppl = all("ppl" in summaries[m] for m in models)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if with_ppl else 1, figsize=(9, 4), dpi=120, squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1]} if with_ppl else None)
    ax = axes[0][0]
    width = 0.8 / max(len(models), 1)
    top = max((summaries[m][k] for m in models for k in keys), default=0.0)
    for i, m in enumerate(models):
        xs = [j + i * width for j in range(len(keys))]
        bars = ax.bar(xs, [summaries[m][k] for k in keys], width=width, label=SHORT_NAMES.get(m, m))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(keys))])
    ax.set_xticklabels(keys)
    ax.set_ylabel("score (0-100 scale)")
    ax.set_ylim(0, max(top * 1.2, 1.0))  # all-zero scores (a broken model) still get a readable 0-1 axis
    ax.set_title("PsyDTCorpus test: " + " vs ".join(SHORT_NAMES.get(m, m) for m in models), fontsize=9)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    if with_ppl:
        bx = axes[0][1]
        bars = bx.bar([SHORT_NAMES.get(m, m) for m in models], [summaries[m]["ppl"] for m in models],
                      color=[f"C{i}" for i in range(len(models))])
        bx.bar_label(bars, fmt="%.2f", fontsize=7)
        bx.set_title("reference ppl\n(lower is better)", fontsize=9)  # one line is wider than the narrow panel
        bx.grid(axis="y", alpha=0.3)
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
        f"- 生成参数：{describe_generation(meta.get('generation') or {})}", f"- 完成时间：{meta.get('finished')}", "",
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
            lines.append(f"> **{who}**：{md_text(m['content'])}")
        lines += ["", f"- **参考回复**：{md_text(r['reference'])}"]
        if "base_response" in r:
            lines.append(f"- **基础模型**：{md_text(r['base_response']) or '（空）'}")
        lines += [f"- **{'LoRA' if meta.get('adapter') else '模型'}**：{md_text(r['response']) or '（空）'}", ""]
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return md_path, png_path
