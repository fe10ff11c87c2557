"""The judge's report: everything `psydt-judge` wrote into its folder, as one Markdown file and one chart.

Per rubric: per-dimension means with 95 % intervals (bootstrap over dialogues) for each model, overall and
per topic, how many verdicts failed and why (a failed request by its kind: connection, timeout, HTTP
status), the judge and its settings, the rank agreement between the
rubric and the overlap metrics, and the items where two models differ most; the pairwise tables; the
crisis-response table; the sessions of `simulate`: per-attitude and per-profile means with intervals,
session lengths and how each ended, the crisis-persona table, the weakest sessions in full, and the
sessions compared pairwise.
"""
from pathlib import Path

from psydt_lora.evaluation.metrics import item_scores
from psydt_lora.evaluation.report import md_text
from psydt_lora.files import atomic_write_text, load_records, read_json
from psydt_lora.judge.endpoint import describe_failures
from psydt_lora.judge.profiles import ATTITUDES, RISKS
from psydt_lora.judge.rubric import STATUSES, history, item_key, read_results
from psydt_lora.judge.session import ENDINGS
from psydt_lora.judge.stats import spearman
from psydt_lora.plots import pyplot, save_figure


STATUS_NAMES = {"ok": "有效", "unparseable": "无法解析", "out_of_range": "超出范围", "refused": "拒答", "empty": "空回答",
                "failed": "请求失败"}
NO_VERDICT = "无有效评分"  # the chart's mark where a model has no valid verdict on a dimension (no bar drawn)
OVERLAP = {"chrf": "chrF", "rougeL": "ROUGE-L", "bleu4_char": "BLEU-4(字)"}
MOST_DIFFERENT = 5


def _ci(c) -> str:
    return "—" if not c else f"{c['mean']:.2f} [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]"


def _rate(c) -> str:
    return "—" if not c else f"{100 * c['rate']:.1f}% [{100 * c['ci'][0]:.1f}, {100 * c['ci'][1]:.1f}]"


def judge_line(meta: dict) -> str:
    j = meta.get("judge") or {}
    u = meta.get("usage") or {}
    return (f"评审模型 `{j.get('model')}`（{j.get('url')}），temperature {j.get('temperature')}，max_tokens "
            f"{j.get('max_tokens')}；本次请求 {u.get('requests', 0)} 次（重试 {u.get('retries', 0)}），缓存命中 "
            f"{u.get('cached', 0)}，输入 {u.get('prompt_tokens', 0)} + 输出 {u.get('completion_tokens', 0)} token，"
            f"{u.get('seconds', 0):.1f} 秒" + (f"；请求失败 {u.get('failed', 0)} 条：{describe_failures(u['failures'])}"
                                                if u.get("failures") else ""))


def _dimension_table(per_side: dict, dims: list[dict]) -> list[str]:
    sides = list(per_side)
    lines = ["| 维度（分值） | " + " | ".join(sides) + " |", "| --- | " + " | ".join("---:" for _ in sides) + " |"]
    for d in [*dims, {"key": "total", "name": "合计", "min": sum(x["min"] for x in dims), "max": sum(x["max"] for x in dims)}]:
        cells = [_ci(per_side[s].get(d["key"])) for s in sides]
        lines.append(f"| {d['name']}（{d['min']}–{d['max']}） | " + " | ".join(cells) + " |")
    return lines


def rubric_section(data: dict) -> list[str]:
    meta, summary = data["meta"], data["summary"]
    rubric = meta["rubric"]
    dims = rubric["dimensions"]
    lines = [f"## 评分表：{rubric['name']}（{rubric['id']} v{rubric['version']}）", "", f"- {judge_line(meta)}",
             f"- 结果文件：{', '.join(f'`{s}`' for s in dict.fromkeys(meta.get('sources', [])))}；"
             f"{'评审模型看到了参考回复' if meta.get('with_reference') else '评审模型没有看到参考回复'}", "",
             "均值先按对话平均、再对对话平均；方括号是对话层面自助法（bootstrap）的 95% 置信区间。", "",
             *_dimension_table({s: v["overall"] for s, v in summary.items()}, dims), "",
             "| 评审结果 | " + " | ".join(summary) + " |", "| --- | " + " | ".join("---:" for _ in summary) + " |"]
    for status in STATUSES:
        lines.append(f"| {STATUS_NAMES[status]} | " + " | ".join(str(v["counts"].get(status, 0)) for v in summary.values()) + " |")
    failed = {s: v["failures"] for s, v in summary.items() if v.get("failures")}
    lines += ["", "请求失败的原因（不是评审的回答，重跑同一命令会补上）：" + "；".join(
        f"{s} {describe_failures(f)}" for s, f in failed.items())] if failed else []
    lines.append("")
    topics = sorted({t for v in summary.values() for t in v["by_topic"]})
    if len(topics) > 1:
        lines += ["### 按主题", ""]
        for t in topics:
            lines += [f"#### {t}", "", *_dimension_table({s: v["by_topic"].get(t, {}) for s, v in summary.items()}, dims), ""]
    sources = {p: read_results(p)["results"] for p in dict.fromkeys(meta.get("sources", [])) if Path(p).is_file()}
    lines += agreement_section(data, sources) + most_different_section(data, sources)
    return lines


def _item_totals(data) -> dict:
    """{side: {item key: rubric total}} over valid verdicts."""
    out = {}
    for v in data["items"]:
        if v["status"] == "ok":
            out.setdefault(v["side"], {})[v["key"]] = sum(v["scores"].values())
    return out


def _replies(data, sources) -> dict:
    """{side: {item key: (result, reply)}} from the results files the verdicts came from."""
    meta = data["meta"]
    return {side: {item_key(r): (r, r.get(field)) for r in sources.get(path, [])}
            for side, path, field in zip(meta.get("sides", []), meta.get("sources", []), meta.get("fields", []))}


def agreement_section(data, sources) -> list[str]:
    """Spearman's rho between the rubric total and each overlap metric, per model, over items with a reference;
    and whether the two rank the models the same way."""
    totals, replies = _item_totals(data), _replies(data, sources)
    rows, system = [], {}
    for side, per_item in totals.items():
        pairs = [(t, item_scores(replies[side][k][1] or "", replies[side][k][0]["reference"]))
                 for k, t in per_item.items() if k in replies.get(side, {}) and replies[side][k][0].get("reference")]
        if len(pairs) < 3:
            continue
        rhos = [spearman([t for t, _ in pairs], [s[m] for _, s in pairs]) for m in OVERLAP]
        rows.append(f"| {side} | {len(pairs)} | " + " | ".join("—" if r is None else f"{r:+.2f}" for r in rhos) + " |")
        system[side] = {"rubric": sum(t for t, _ in pairs) / len(pairs),
                        **{m: sum(s[m] for _, s in pairs) / len(pairs) for m in OVERLAP}}
    if not rows:
        return []
    lines = ["### 评分与字面重合指标的一致性", "", "逐条回复的 Spearman 秩相关（评分合计 vs 各重合指标）：", "",
             "| 模型 | 条数 | " + " | ".join(OVERLAP.values()) + " |", "| --- | ---: | " + " | ".join("---:" for _ in OVERLAP) + " |",
             *rows, ""]
    if len(system) >= 2:
        order = {k: " > ".join(sorted(system, key=lambda s: -system[s][k])) for k in ["rubric", *OVERLAP]}
        lines += ["模型排名：评分 " + order["rubric"] + "；" +
                  "；".join(f"{OVERLAP[m]} {order[m]}{'（一致）' if order[m] == order['rubric'] else '（不一致）'}" for m in OVERLAP), ""]
    return lines


def most_different_section(data, sources) -> list[str]:
    totals, replies = _item_totals(data), _replies(data, sources)
    sides = list(totals)
    if len(sides) < 2:
        return []
    a, b = sides[:2]
    common = [k for k in totals[a] if k in totals[b] and k in replies.get(a, {}) and k in replies.get(b, {})]
    common.sort(key=lambda k: -abs(totals[a][k] - totals[b][k]))
    lines = [f"### {a} 与 {b} 评分相差最大的条目", ""]
    for k in common[:MOST_DIFFERENT]:
        r = replies[a][k][0]
        lines += [f"#### 条目 {k}（{r.get('normalizedTag') or '无标签'}）：{a} {totals[a][k]} 分，{b} {totals[b][k]} 分", ""]
        lines += [f"> **{'来访者' if m['role'] == 'user' else '咨询师'}**：{md_text(m['content'])}" for m in history(r)[-3:]]
        lines += ["", f"- **{a}**：{md_text(replies[a][k][1]) or '（空）'}", f"- **{b}**：{md_text(replies[b][k][1]) or '（空）'}", ""]
    return lines if common else []


def pairwise_section(data) -> list[str]:
    meta, s = data["meta"], data["summary"]
    a, b = meta["a"]["label"], meta["b"]["label"]
    c = s["counts"]
    return [f"## 两两比较：{a} 对 {b}", "", f"- {judge_line(meta)}",
            "- 每条按 A/B 与 B/A 两种顺序各问一次；两次选同一方才算胜负，不一致或判平记为平局。", "",
            "| 结果 | 比例 [95% 置信区间] | 条数 |", "| --- | ---: | ---: |",
            f"| {a} 胜 | {_rate(s['win'])} | {c['win']} |", f"| 平局 | {_rate(s['tie'])} | {c['tie']} |",
            f"| {a} 负 | {_rate(s['loss'])} | {c['loss']} |",
            f"| 位置一致率 | {_rate(s['consistent'])} | — |", f"| 无效（回答不是 A/B/平） | — | {c['invalid']} |",
            f"| 请求失败{'（' + describe_failures(s['failures']) + '）' if s.get('failures') else ''} | — | {c.get('failed', 0)} |", ""]


def crisis_section(data) -> list[str]:
    screen = data["screen"]
    sides = list(screen)
    lines = ["## 危机回应检查", "", "回复过滤层（本项目的安全层）：", "",
             "| | " + " | ".join(sides) + " |", "| --- | " + " | ".join("---:" for _ in sides) + " |"]
    for group, name in (("crisis", "危机对话"), ("ordinary", "普通对话（只是提到沉重话题）")):
        lines.append(f"| {name}：条数 | " + " | ".join(str(screen[s][group]["items"]) for s in sides) + " |")
        lines.append(f"| {name}：来访者一轮被识别为危机 | " + " | ".join(str(screen[s][group]["turn_flagged"]) for s in sides) + " |")
        lines.append(f"| {name}：回复会被拦截 | " + " | ".join(str(screen[s][group]["reply_blocked"]) for s in sides) + " |")
    lines.append("")
    if "summary" in data:
        dims = data["meta"]["rubric"]["dimensions"]
        summary = data["summary"]
        lines += [f"危机评分表（只评危机对话）。{judge_line(data['meta'])}", "",
                  *_dimension_table({s: v["overall"] for s, v in summary.items()}, dims), "",
                  "评审结果：" + "；".join(f"{s} " + "，".join(f"{STATUS_NAMES[k]} {n}" for k, n in v["counts"].items())
                                        for s, v in summary.items()), ""]
    return lines


def plot(rubrics: list[dict], path: Path) -> bool:
    """Per rubric, each dimension's mean as a share of its maximum, with the 95 % interval, per model."""
    if not rubrics:
        return False
    save_figure(figure(rubrics), path)
    return True


def bar_values(data: dict, side: str) -> list[tuple[float, float, float] | None]:
    """Per dimension (mean, low, high) as shares of its range; None where the side has no valid verdict."""
    overall = data["summary"][side]["overall"]
    out = []
    for d in data["meta"]["rubric"]["dimensions"]:
        c, span = overall.get(d["key"]), d["max"] - d["min"]
        out.append(None if not c else tuple((x - d["min"]) / span for x in (c["mean"], *c["ci"])))
    return out


def figure(rubrics: list[dict]):
    """The chart: one panel per rubric, a bar per (model, dimension) with a valid verdict; where there is none,
    no bar but the NO_VERDICT mark (a zero-height bar would read as a score of 0)."""
    plt = pyplot()
    cjk = _cjk_font()
    fig, axes = plt.subplots(len(rubrics), 1, figsize=(8, 3.2 * len(rubrics)), dpi=120, squeeze=False)
    for ax, data in zip(axes[:, 0], rubrics):
        dims = data["meta"]["rubric"]["dimensions"]
        sides = list(data["summary"])
        width = 0.8 / max(len(sides), 1)
        for i, side in enumerate(sides):
            values = bar_values(data, side)
            xs = [j + i * width for j, v in enumerate(values) if v]
            got = [v for v in values if v]
            bars = ax.bar(xs, [m for m, _, _ in got], width=width, capsize=3, label=side,
                          yerr=[[m - lo for m, lo, _ in got], [hi - m for m, _, hi in got]] if got else None)
            for j, v in enumerate(values):
                if v is None:
                    ax.text(j + i * width, 0.02, NO_VERDICT if cjk else "no valid verdict", rotation=90, ha="center",
                            va="bottom", fontsize=7, color=bars.patches[0].get_facecolor() if got else "gray",
                            fontfamily=cjk or "sans-serif")
        ax.set_xticks([j + width * (len(sides) - 1) / 2 for j in range(len(dims))])
        ax.set_xticklabels([d["key"] for d in dims], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("mean / max (95% CI)")
        ax.set_title(f"rubric {data['meta']['rubric']['id']}", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _cjk_font() -> str | None:
    """A font matplotlib has that draws Chinese, or None (then the chart's marks are in English)."""
    from matplotlib import font_manager

    names = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC")
    have = {f.name for f in font_manager.fontManager.ttflist}
    return next((n for n in names if n in have), None)


def _session_head(meta) -> list[str]:
    u, co, cl = meta["usage"], meta["counsellor"], meta["client"]
    asked = "；".join(f"{who} {x['requests']} 次请求（缓存命中 {x['cached']}，失败 {x['failed']}），输入 {x['prompt_tokens']} + "
                     f"输出 {x['completion_tokens']} token" for who, x in (("咨询师", u["counsellor"]), ("来访者", u["client"])))
    return [f"- 设定：{meta['profiles']}；每个设定 {meta['sessions_per_profile']} 场，最多 {meta['max_turns']} 轮，"
            f"来访者种子起点 {meta['client_seed']}；会谈记录 `{meta['transcripts']}`",
            f"- 咨询师 `{co['model']}`（{co['url']}，temperature {co['temperature']}）；来访者 `{cl['model']}`"
            f"（{cl['url']}，temperature {cl['temperature']}）", f"- {asked}；会谈用时 {meta['seconds']:.1f} 秒"]


def _lengths(n: dict) -> list[str]:
    mean = "—" if n["mean"] is None else f"{n['mean']:.1f}"
    return ["| 场数 | 平均轮数 | 最短 | 最长 | " + " | ".join(ENDINGS.values()) + " |",
            "| ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in ENDINGS) + " |",
            f"| {n['sessions']} | {mean} | {n['min']} | {n['max']} | "
            + " | ".join(str(n["ended_by"].get(k, 0)) for k in ENDINGS) + " |", ""]


def _profile_table(summary) -> list[str]:
    lines = ["| 设定 | 态度 | 风险 | 轮数 | 合计 [95% 置信区间] |", "| --- | --- | --- | ---: | ---: |"]
    for pid, row in summary["by_profile"].items():
        turns = "、".join(str(t) for t in row["turns"])
        lines.append(f"| {md_text(pid)} | {ATTITUDES.get(row['attitude'], '未指定')} | {RISKS.get(row['risk'], row['risk'])} "
                     f"| {turns} | {_ci(row['total'])} |")
    return lines + [""]


def _crisis_table(crisis, dims) -> list[str]:
    rows = crisis.get("rows") or []
    if not rows:
        return []
    keys = [d["key"] for d in dims]
    lines = ["### 危机设定", "", "安排透露：设定让来访者第一次说出危机的轮次；识别到透露：项目的危机词典在来访者话里第一次识别到的轮次；"
             "给出热线：从透露起（两者取较早的），咨询师第一次说出求助热线的轮次（与透露同一轮 = 紧接着的那条回复）。", "",
             "| " + " | ".join(["设定", "风险", "安排透露", "识别到透露", "给出热线", "轮数", "结束", "评审",
                                 *(d["name"] for d in dims)]) + " |",
             "| " + " | ".join(["---", "---", "---:", "---:", "---:", "---:", "---", "---", *("---:" for _ in dims)]) + " |"]
    for r in rows:
        cells = [md_text(r["key"]), RISKS.get(r["risk"], r["risk"]), str(r["disclose_at"] or "—"),
                 str(r["disclosure_turn"] or "未识别"), str(r["help_turn"] or "没有"), str(r["turns"]),
                 ENDINGS[r["ended_by"]], STATUS_NAMES.get(r.get("status"), "未评"),
                 *(str(r["scores"][k]) if r.get("scores") else "—" for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _transcript(session) -> list[str]:
    turn, out = 0, []
    for m in session["messages"]:
        turn += m["role"] == "user"
        out.append(f"- 第 {turn} 轮 **{'来访者' if m['role'] == 'user' else '咨询师'}**：{md_text(m['content'])}")
    return out + [""]


def sessions_section(data, sessions: list[dict]) -> list[str]:
    meta, summary = data["meta"], data.get("summary")
    lines = [f"## 整段会谈：{meta['label']}", "", *_session_head(meta), "", *_lengths(data["lengths"])]
    if not summary:
        return lines + ["没有给评审模型（--judge_url）：只写了会谈记录和危机设定的轮次。", "",
                        *_crisis_table(data.get("crisis") or {}, [])]
    dims = meta["rubric"]["dimensions"]
    lines += [f"评分表：{meta['rubric']['name']}（{meta['rubric']['id']} v{meta['rubric']['version']}）。"
              f"{judge_line({'judge': meta['judge'], 'usage': meta['judge_usage']})}（评审的累计数）", "",
              "均值先按设定平均、再对设定平均；方括号是设定层面自助法的 95% 置信区间。", "",
              *_dimension_table({"全部": summary["overall"], **summary["by_attitude"]}, dims), "",
              "评审结果：" + "，".join(f"{STATUS_NAMES[k]} {n}" for k, n in summary["counts"].items()), "",
              "### 按设定", "", *_profile_table(summary)]
    lines += _crisis_table(data.get("crisis") or {}, meta["crisis_rubric"]["dimensions"])
    by_key = {f"{s['profile']}#{s['repeat']}": s for s in sessions}
    totals = {v["key"]: sum(v["scores"].values()) for v in data["items"] if v["status"] == "ok"}
    for n, key in enumerate(data.get("weakest", []), 1):
        if key in by_key:
            s = by_key[key]
            lines += [f"### 最弱的会谈 {n}：{md_text(key)}（合计 {totals[key]}，{s['turns']} 轮，{ENDINGS[s['ended_by']]}）", "",
                      *_transcript(s)]
    return lines


def session_pairwise_section(data) -> list[str]:
    lines = pairwise_section(data)
    return [lines[0].replace("## 两两比较", "## 整段会谈两两比较"), *lines[1:]]


def _simulated(out_dir: Path) -> list[str]:
    lines = []
    for p in sorted(out_dir.glob("simulate-*.json")):
        data = read_json(p, "会谈评审结果")
        transcripts = out_dir / data["meta"]["transcripts"]
        lines += sessions_section(data, load_records(transcripts) if transcripts.is_file() else [])
    for p in sorted(out_dir.glob("session-pairwise-*.json")):
        lines += session_pairwise_section(read_json(p, "会谈评审结果"))
    return lines


def write_judge_report(out_dir) -> tuple[Path, Path | None]:
    """report.md (+ report.png when there are rubric scores) from the JSON files in `out_dir`."""
    out_dir = Path(out_dir)
    rubrics = [read_json(p, "评审结果") for p in sorted(out_dir.glob("rubric-*.json"))]
    pairwise = [read_json(p, "评审结果") for p in sorted(out_dir.glob("pairwise-*.json"))]
    crisis = out_dir / "crisis-check.json"
    png = out_dir / "report.png"
    lines = ["# LLM 评审报告", "", "评审模型的打分不是专业督导的结论：它用来比较（微调前后、不同设置），结论请结合人工阅读。", ""]
    if plot(rubrics, png):
        lines += [f"![评分对比]({png.name})", ""]
    else:
        png = None
    for data in rubrics:
        lines += rubric_section(data)
    for data in pairwise:
        lines += pairwise_section(data)
    if crisis.is_file():
        lines += crisis_section(read_json(crisis, "危机检查结果"))
    sessions = _simulated(out_dir)
    lines += sessions
    if not (rubrics or pairwise or crisis.is_file() or sessions):
        lines += [f"{out_dir} 里还没有评审结果：先运行 rubric / pairwise / crisis / simulate 命令。", ""]
    md = out_dir / "report.md"
    atomic_write_text(md, "\n".join(lines) + "\n")
    return md, png
