"""Evaluation: metric functions on hand-checked examples, reference perplexity, base vs LoRA report."""
import json
import math

import pytest

import inference_psydt_lora
from psydt_lora.evaluation.metrics import bleu4, chars, distinct, item_scores, reference_losses, rouge, summarize


def test_identical_empty_and_think_blocks():
    same = item_scores("今天天气很好，我们出去走走吧。", "今天天气很好，我们出去走走吧。")
    assert all(v == pytest.approx(100, abs=1e-3) for v in same.values()), same
    assert item_scores("<think>\n先想想\n</think>\n\n今天天气很好，我们出去走走吧。", "今天天气很好，我们出去走走吧。") == same
    empty = item_scores("", "今天天气很好")
    assert all(v == 0 for v in empty.values())
    assert item_scores("<think>只想不说</think>", "今天天气很好") == empty


def test_bleu4_on_characters_by_hand():
    # clipped n-gram precisions 4/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    want = 100 * (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu4(chars("今天天气很好"), chars("今天天气不错")) == pytest.approx(want, rel=1e-6)
    # brevity penalty: a 4-char prefix of an 6-char reference
    assert bleu4(chars("今天天气"), chars("今天天气不错")) == pytest.approx(100 * math.exp(1 - 6 / 4), rel=1e-6)


def test_rouge_f1_by_hand():
    s = rouge(["我", "很", "好"], ["我", "很", "开心"])
    assert s["rouge1"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert s["rouge2"] == pytest.approx(50, abs=1e-3)
    assert s["rougeL"] == pytest.approx(100 * 2 / 3, abs=1e-3)


def test_distinct_and_summary_count_empty_responses():
    assert distinct(["a b a"], 1) == pytest.approx(2 / 3)
    assert distinct(["a b a"], 2) == pytest.approx(1.0)
    entries = [{"response": "今天很好", "scores": item_scores("今天很好", "今天很好")},
               {"response": "", "scores": item_scores("", "今天很好")}]
    s = summarize(entries, "response", "scores", None)
    assert s["empty_rate"] == 0.5 and s["mean_length"] == 2.0
    assert s["chrf"] == pytest.approx(50, abs=1e-3)  # the empty one counts as 0, it is not skipped


def test_reference_perplexity_is_exp_of_the_training_loss(tiny_model_dir, memorised_adapter, data_files):
    import torch

    from psydt_lora.data.dialogues import read_dialogues
    from psydt_lora.models import load_for_inference
    from psydt_lora.data.samples import build_samples

    model, tok, _, _ = load_for_inference(tiny_model_dir, memorised_adapter, device="cpu")
    _, test = data_files
    items, _ = read_dialogues(test)
    losses = reference_losses(model, tok, items, context_limit=2048, batch_size=3)
    samples, _ = build_samples(items, tok, 2048, last_reply_only=True)
    total, count = 0.0, 0
    for s in samples:  # independently: the model's own loss on the training code's sample, one at a time
        with torch.no_grad():
            out = model(input_ids=torch.tensor([s.input_ids]), labels=torch.tensor([s.labels]))
        n = sum(1 for t in s.labels[1:] if t != -100)
        total += out.loss.item() * n
        count += n
    assert sum(v["tokens"] for v in losses.values()) == count
    assert sum(v["nll"] for v in losses.values()) / count == pytest.approx(total / count, rel=1e-5)


def test_compare_base_writes_both_columns_a_report_and_a_png(tiny_model_dir, memorised_adapter, data_files, tmp_path,
                                                             capsys):
    from PIL import Image

    _, test = data_files
    out = tmp_path / "results.json"
    assert inference_psydt_lora.main([
        "--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--mode", "test",
        "--test_file", str(test), "--test_output_file", str(out), "--compare_base", "--no-do_sample",
        "--max_new_tokens", "40", "--batch_size", "2"]) == 0
    rep = json.loads(out.read_text("utf-8"))
    for r in rep["results"]:
        assert r["response"] == r["reference"] != r["base_response"]  # memorised by the adapter, not the base
        assert set(r["scores"]) == set(r["base_scores"]) and r["reference_loss"]["tokens"] > 0
    ev = rep["metrics"]
    assert set(ev["overall"]) == {"base", "lora"}
    assert ev["overall"]["lora"]["rougeL"] > ev["overall"]["base"]["rougeL"]
    assert ev["overall"]["lora"]["ppl"] < ev["overall"]["base"]["ppl"]
    assert set(ev["by_tag"]) == {"情绪", "婚恋"} and set(ev["by_tag"]["情绪"]) == {"base", "lora"}
    assert "BLEU-4（字符" in ev["labels"]["bleu4_char"]
    md = out.with_suffix(".md").read_text("utf-8")
    assert "基础模型" in md and "LoRA 微调后" in md and "### 情绪" in md and "参考回复" in md
    assert "loss_curve.png" in md  # the training run's loss curve, linked
    assert "贪心解码" in md and "temperature" not in md  # settings in words, no sampling knobs under greedy
    with Image.open(out.with_suffix(".png")) as img:
        assert img.size[0] > 100
    console = capsys.readouterr().out
    assert "[指标] LoRA 微调后：" in console and "空回复 0.0%" in console and "平均长度" in console
    assert "[指标] 差值（LoRA − 基础模型）：" in console and "ROUGE-L +" in console


def _report(responses, base=None):
    from psydt_lora.evaluation.metrics import item_scores, summarize

    entries = [{"response": r, "reference": "我能理解你的感受。", "scores": item_scores(r, "我能理解你的感受。")}
               for r in responses]
    overall = {"lora": summarize(entries, "response", "scores", None)}
    if base is not None:
        for e, b in zip(entries, base):
            e["base_response"], e["base_scores"] = b, item_scores(b, "我能理解你的感受。")
        overall["base"] = summarize(entries, "base_response", "base_scores", None)
    return {"meta": {"adapter": "a"}, "results": entries, "metrics": {"overall": overall}}


def test_summary_says_when_every_reply_is_empty():
    from psydt_lora.evaluation.report import summary_lines

    lines = "\n".join(summary_lines(_report(["\n\n", "  ", "\n"])))  # a model that emits only blank lines
    assert "空回复 100.0%" in lines and "[警告]" in lines and "100% 的回复是空的" in lines
    ok = "\n".join(summary_lines(_report(["我能理解你的感受。", "我理解。"], base=["", "好的"])))
    assert "[警告] LoRA" not in ok and "[警告] 基础模型有 50%" in ok
    assert "空回复率 -0.50" in ok  # the difference LoRA - base, signed


def test_markdown_keeps_multi_line_replies_on_their_line():
    from psydt_lora.evaluation.report import md_text

    assert md_text("第一行\n第二行\r\n- 第三行 *强调* <think>|") == "第一行<br>第二行<br>- 第三行 \\*强调\\* &lt;think&gt;\\|"


def test_chart_scales_to_realistic_scores_and_puts_ppl_on_its_own_axis(tmp_path, monkeypatch):
    from psydt_lora.evaluation import report

    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.append(fig))
    small = {k: 0.8 for k in report.CHART_KEYS}
    report.plot_metrics({"lora": {**small, "ppl": 12.5}, "base": {**small, "ppl": 30.0}}, tmp_path / "c.png")
    scores_ax, ppl_ax = figures[0].axes
    assert scores_ax.get_ylim()[1] < 2  # ROUGE-L 0.8 is visible, not a sliver under a 0-100 axis
    assert ppl_ax.get_ylim()[1] >= 30 and "ppl" in ppl_ax.get_title()


def test_generation_settings_in_words():
    from psydt_lora.inference.generation import GenerationSettings

    assert "temperature" not in GenerationSettings(do_sample=False).describe()
    assert "temperature 0.7，top_p 0.8" in GenerationSettings().describe()


def test_compare_base_refuses_a_merged_or_missing_adapter(tiny_model_dir):
    from psydt_lora.errors import PsyDTError

    with pytest.raises(PsyDTError, match="--compare_base"):
        inference_psydt_lora.main(["--model_path", str(tiny_model_dir), "--mode", "test", "--compare_base", "--merge_lora"])
