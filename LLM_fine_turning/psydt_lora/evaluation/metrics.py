"""Evaluation metrics for generated replies against the test split's references.

Text metrics use the field's libraries: nltk BLEU (the LLaMA-Factory convention: sentence BLEU-4 with
smoothing method 3, on characters; also on jieba words), rouge-chinese ROUGE-1/2/L F1 on jieba words,
sacrebleu chrF. Scores are 0-100; an empty response scores 0 (it is counted, not skipped).
Reference perplexity is the teacher-forced loss of the reference reply given its history, built by the
training code itself (same prompt rendering, same masking).
"""
import math
from collections import defaultdict

from psydt_lora.data.packing import IGNORE_INDEX, pad, padding_mask
from psydt_lora.data.samples import build_samples
from psydt_lora.prompt import strip_think


LABELS = {
    "bleu4_char": "BLEU-4（字符，nltk sentence_bleu，smoothing method3，×100）",
    "bleu4_word": "BLEU-4（jieba 分词，nltk sentence_bleu，smoothing method3，×100）",
    "rouge1": "ROUGE-1 F1（jieba 分词，rouge-chinese，×100）",
    "rouge2": "ROUGE-2 F1（jieba 分词，rouge-chinese，×100）",
    "rougeL": "ROUGE-L F1（jieba 分词，rouge-chinese，×100）",
    "chrf": "chrF（sacrebleu sentence_chrf，字符 6-gram，β=2）",
    "distinct1": "distinct-1（全部回复的 jieba 词，不重复 unigram / 总 unigram）",
    "distinct2": "distinct-2（全部回复的 jieba 词，不重复 bigram / 总 bigram）",
    "mean_length": "平均回复长度（字符）",
    "empty_rate": "空回复比例",
    "ppl": "参考回复困惑度（teacher forcing，按 token 加权，exp(平均损失)）",
    "ref_loss": "参考回复平均损失（nats/token）",
}
HIGHER_IS_BETTER = {"ppl": False, "ref_loss": False, "empty_rate": False, "mean_length": None}


def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def words(text: str) -> list[str]:
    return [w for w in _jieba().lcut(text) if w.strip()]


def chars(text: str) -> list[str]:
    return [c for c in text if not c.isspace()]


def bleu4(hyp: list[str], ref: list[str]) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if not hyp or not ref:
        return 0.0
    return 100 * sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method3)


def rouge(hyp_words: list[str], ref_words: list[str]) -> dict:
    from rouge_chinese import Rouge

    if not hyp_words or not ref_words:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    s = Rouge().get_scores(" ".join(hyp_words), " ".join(ref_words))[0]
    return {"rouge1": 100 * s["rouge-1"]["f"], "rouge2": 100 * s["rouge-2"]["f"], "rougeL": 100 * s["rouge-l"]["f"]}


def chrf(hyp: str, ref: str) -> float:
    import sacrebleu

    if not hyp.strip() or not ref.strip():
        return 0.0
    return sacrebleu.sentence_chrf(hyp, [ref]).score


def item_scores(response: str, reference: str) -> dict:
    """Reference-based scores of one response (think blocks stripped first)."""
    hyp, ref = strip_think(response or ""), strip_think(reference or "")
    hw, rw = words(hyp), words(ref)
    return {
        "bleu4_char": bleu4(chars(hyp), chars(ref)),
        "bleu4_word": bleu4(hw, rw),
        **rouge(hw, rw),
        "chrf": chrf(hyp, ref),
    }


def distinct(responses: list[str], n: int) -> float:
    grams, total = set(), 0
    for r in responses:
        w = words(strip_think(r or ""))
        for i in range(len(w) - n + 1):
            grams.add(tuple(w[i:i + n]))
            total += 1
    return len(grams) / total if total else 0.0


def summarize(entries: list[dict], response_key: str, scores_key: str, loss_key: str | None) -> dict:
    """Corpus-level metrics of one model over `entries` (each holding per-item scores and losses)."""
    if not entries:
        return {}
    responses = [strip_think(e.get(response_key) or "") for e in entries]
    out = {k: sum(e[scores_key][k] for e in entries) / len(entries) for k in entries[0][scores_key]}
    out["distinct1"] = distinct(responses, 1)
    out["distinct2"] = distinct(responses, 2)
    out["mean_length"] = sum(len(r) for r in responses) / len(responses)
    out["empty_rate"] = sum(1 for r in responses if not r) / len(responses)
    if loss_key and all(loss_key in e for e in entries):
        nll = sum(e[loss_key]["nll"] for e in entries)
        tokens = sum(e[loss_key]["tokens"] for e in entries)
        out["ref_loss"] = nll / tokens if tokens else float("nan")
        out["ppl"] = math.exp(out["ref_loss"]) if tokens else float("nan")
    out["items"] = len(entries)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def by_tag(entries, response_key, scores_key, loss_key) -> dict:
    groups = defaultdict(list)
    for e in entries:
        groups[e.get("normalizedTag") or "（无标签）"].append(e)
    return {tag: summarize(g, response_key, scores_key, loss_key) for tag, g in sorted(groups.items())}


def reference_losses(model, tokenizer, items, context_limit: int, batch_size: int = 8) -> dict:
    """Teacher-forced loss of each item's final (reference) reply given its history, context and reply
    together within the model's `context_limit` (the same truncation as training samples).
    Returns {item.index: {"nll": summed loss in nats, "tokens": supervised tokens}}."""
    import torch
    import torch.nn.functional as F


    samples, _ = build_samples(items, tokenizer, context_limit, last_reply_only=True)
    device = next(model.parameters()).device
    out = {}
    model_was_training = model.training
    model.eval()
    for i in range(0, len(samples), batch_size):
        batch = samples[i:i + batch_size]
        rows = [s.input_ids for s in batch]
        ids, mask = pad(rows, tokenizer.pad_token_id), padding_mask(rows)
        labels = pad([s.labels for s in batch], IGNORE_INDEX)
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
        nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
        for row, s in enumerate(batch):
            valid = shift_labels[row] != IGNORE_INDEX
            out[s.dialogue_index] = {"nll": float(nll[row][valid].sum()), "tokens": int(valid.sum())}
    model.train(model_was_training)
    return out
