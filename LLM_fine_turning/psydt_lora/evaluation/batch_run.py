"""The batch test: generate a reply for every test item, batched, resumable, written atomically.

Each finished batch is appended to `<output>.partial.jsonl`; a run killed halfway and started again
with the same command skips what is done. The final JSON appears only when every item is there.
"""
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

from psydt_lora.data.dialogues import Dialogue
from psydt_lora.errors import PsyDTError
from psydt_lora.files import atomic_write_json, read_user_text
from psydt_lora.evaluation.metrics import LABELS, by_tag, item_scores, reference_losses, summarize
from psydt_lora.evaluation.report import write_report
from psydt_lora.inference.generation import generate_batch, prepare_context
from psydt_lora.safety.session import DisabledSafety


def read_questions(path) -> list[str]:
    """A questions file: JSON list of strings, or plain text with one question per line."""
    path = Path(path)
    text = read_user_text(path, "问题文件")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PsyDTError(f"问题文件 {path} 不是合法的 JSON（第 {err.lineno} 行）。") from None
        bad = [i for i, q in enumerate(data) if not isinstance(q, str) or not q.strip()]
        if bad:
            raise PsyDTError(f"问题文件 {path} 第 {bad[0] + 1} 项必须是非空字符串。")
        questions = [q.strip() for q in data]
    else:
        questions = [line.strip() for line in text.splitlines() if line.strip()]
    if not questions:
        raise PsyDTError(f"问题文件 {path} 里没有问题。")
    return questions


def questions_as_items(questions, system) -> list[Dialogue]:
    """Every question is its own fresh conversation (no chaining of earlier answers)."""
    head = [{"role": "system", "content": system}] if system else []
    return [Dialogue(index=i, id=i, tag=None, messages=head + [{"role": "user", "content": q}]) for i, q in enumerate(questions)]


def context_messages(item: Dialogue, system_override):
    msgs = item.messages
    reference = None
    if msgs and msgs[-1]["role"] == "assistant":
        reference, msgs = msgs[-1]["content"], msgs[:-1]
    if system_override is not None:
        msgs = [m for m in msgs if m["role"] != "system"]
        msgs = ([{"role": "system", "content": system_override}] if system_override else []) + msgs
    return msgs, reference


def _fingerprint(meta: dict, items) -> str:
    stable = {k: v for k, v in meta.items() if k not in ("started", "device")}
    key = json.dumps({"meta": stable, "items": [(i.index, i.id) for i in items]}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _load_partial(path: Path, fingerprint: str) -> dict:
    """Finished entries from an earlier, interrupted run with the same settings."""
    if not path.is_file():
        return {}
    done = {}
    lines = path.read_text("utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("fingerprint") != fingerprint:
        stale = path.with_name(path.name + ".stale")
        os.replace(path, stale)
        print(f"[续跑] {path} 来自设置不同的一次运行，已改名为 {stale.name}，从头开始。")
        return {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            continue
        done[entry["position"]] = entry
    return done


@dataclass
class BatchRun:
    """How and where one batch test runs: everything `run_test` needs besides the model, the items, the
    generation settings and the safety layer."""
    output_file: Path
    batch_size: int
    context_limit: int
    meta: dict
    system_override: str | None = None
    compare_base: bool = False  # generate again with the adapter disabled
    loss_curve: Path | None = None  # the training loss curve, linked from the report
    progress: bool = True
    after_batch: Callable[[int], None] | None = None  # called with the number of finished items

    def __post_init__(self):
        self.output_file = Path(self.output_file)

    @property
    def partial(self) -> Path:
        return self.output_file.with_name(self.output_file.name + ".partial.jsonl")


class Planned(NamedTuple):
    """One test item still to generate, with the context it is asked in."""
    position: int  # its place in the items (the key of the partial file)
    item: Dialogue
    messages: list  # the history it is asked to answer (system override applied)
    reference: str | None  # the recorded reply, when the item has one
    ids: list  # the rendered context, fitted to the window
    dropped: int  # oldest rounds left out to fit


def run_test(model, tokenizer, items, settings, run: BatchRun, safety=None):
    """Generate for `items` (and, with `run.compare_base`, again with the adapter disabled); score against
    the references when there are any. Returns the report dict, also written to `run.output_file`
    (plus a Markdown report and a PNG chart beside it when scored). `safety`: a Safety, or None/the
    disabled one (no safety fields)."""
    from transformers import set_seed

    safety = safety or DisabledSafety()
    meta = run.meta
    done = _resume(run.partial, _fingerprint({**meta, "system_override": run.system_override,
                                              "compare_base": run.compare_base}, items), len(items))
    todo = _plan(items, done, tokenizer, settings, run)
    set_seed(meta.get("seed", 42))
    started = time.time()
    new_tokens = _generate_all(model, tokenizer, todo, settings, run, done, safety)
    elapsed = time.time() - started
    results = [done[p] for p in range(len(items))]
    for r in results:
        r.pop("position", None)
    report = {"meta": {
        **meta,
        "finished": datetime.now().isoformat(timespec="seconds"),
        "items": len(results),
        "generated_this_run": len(todo),
        "seconds_this_run": round(elapsed, 2),
        "new_tokens_this_run": new_tokens,
        "tokens_per_second": round(new_tokens / elapsed, 2) if elapsed > 0 else None,
        "generation": settings.as_dict(),
        "hit_max_new_tokens": sum(1 for r in results if r.get("hit_max_new_tokens")),
        "batch_size": run.batch_size,
    }, "results": results}
    summary = safety.batch_summary(results)
    if summary is not None:
        report["meta"]["safety"] = summary
    scored = any(r.get("reference") is not None for r in results)
    if scored:
        report["metrics"] = evaluate(model, tokenizer, items, results, run, "lora" if meta.get("adapter") else "base")
    atomic_write_json(run.output_file, report)
    run.partial.unlink(missing_ok=True)
    if scored:
        md, png = write_report(report, run.output_file, loss_curve=run.loss_curve)
        print(f"[评估] 报告 {md}，图表 {png}")
    return report


def _resume(partial: Path, fingerprint: str, total: int) -> dict:
    """Entries finished by an earlier run with the same settings; starts the partial file when there is none."""
    done = _load_partial(partial, fingerprint)
    if done:
        print(f"[续跑] 已完成 {len(done)}/{total} 条，继续剩下的。")
    if not partial.is_file():
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"fingerprint": fingerprint}) + "\n", "utf-8")
    return done


def _plan(items, done, tokenizer, settings, run: BatchRun) -> list[Planned]:
    """What is left, longest context first: similar lengths share a batch (less padding), and memory
    trouble shows up at once."""
    todo = []
    for pos, item in enumerate(items):
        if pos in done:
            continue
        msgs, reference = context_messages(item, run.system_override)
        if not msgs or msgs[-1]["role"] != "user":
            raise PsyDTError(f"测试文件第 {item.index + 1} 条（id={item.id!r}）的历史不以 user 消息结尾，无法生成回复。")
        ids, dropped = prepare_context(tokenizer, msgs, settings.max_new_tokens, run.context_limit, settings.enable_thinking)
        todo.append(Planned(pos, item, msgs, reference, ids, dropped))
    return sorted(todo, key=lambda t: -len(t.ids))


def _generate_all(model, tokenizer, todo, settings, run: BatchRun, done, safety) -> int:
    """Generate batch by batch, appending each finished batch to the partial file; returns new tokens."""
    batches = [todo[i:i + run.batch_size] for i in range(0, len(todo), run.batch_size)]
    bar = None
    if run.progress and batches:
        bar = tqdm(total=len(todo), desc="批量测试", unit="条")
    new_tokens = 0
    with open(run.partial, "a", encoding="utf-8") as sink:
        for batch in batches:
            contexts = [t.ids for t in batch]
            texts, counts = generate_batch(model, tokenizer, contexts, settings)
            new_tokens += sum(counts)
            base_texts = [None] * len(batch)
            if run.compare_base:  # the same model with the LoRA layers switched off: loaded once
                with model.disable_adapter():
                    base_texts, base_counts = generate_batch(model, tokenizer, contexts, settings)
                new_tokens += sum(base_counts)
            for planned, text, n, base_text in zip(batch, texts, counts, base_texts):
                entry = _entry(planned, text, n, base_text, settings, safety, run.compare_base)
                sink.write(json.dumps(entry, ensure_ascii=False) + "\n")
                done[entry["position"]] = entry
            sink.flush()
            os.fsync(sink.fileno())
            if bar is not None:
                bar.update(len(batch))
            if run.after_batch is not None:
                run.after_batch(len(done))
    if bar is not None:
        bar.close()
    return new_tokens


def _entry(planned: Planned, text, n, base_text, settings, safety, compare_base) -> dict:
    """One result: the raw reply (scored) with its context facts and safety fields."""
    item, msgs, ids = planned.item, planned.messages, planned.ids
    entry = {
        "position": planned.position,
        "index": item.index,
        "id": item.id,
        "normalizedTag": item.tag,
        "history_turns": sum(1 for m in msgs if m["role"] == "user") - 1,
        "dropped_rounds": planned.dropped,
        "prompt_tokens": len(ids),
        "response_tokens": n,
        "hit_max_new_tokens": n >= settings.max_new_tokens,
        "history_tail": [m for m in msgs if m["role"] != "system"][-3:],
        "context": [m for m in msgs if m["role"] != "system"],  # the real history, for the LLM judge
        "response": text,
        "reference": planned.reference,
    }
    if compare_base:
        entry["base_response"] = base_text
    entry.update(safety.result_fields(msgs, text, base_text if compare_base else None))
    return entry


def evaluate(model, tokenizer, items, results, run: BatchRun, name):
    """Reference-based metrics and reference perplexity, per model, overall and per normalizedTag."""
    print("[评估] 计算指标与参考回复困惑度 ...", flush=True)
    contexts = []
    for item in items:
        msgs, reference = context_messages(item, run.system_override)
        if reference is not None:
            contexts.append(Dialogue(item.index, item.id, item.tag, msgs + [{"role": "assistant", "content": reference}]))
    losses = reference_losses(model, tokenizer, contexts, run.context_limit, run.batch_size)
    base_losses = {}
    compare_base = run.compare_base
    if compare_base:
        with model.disable_adapter():
            base_losses = reference_losses(model, tokenizer, contexts, run.context_limit, run.batch_size)
    entries = []
    for r in results:
        if r.get("reference") is None:
            continue
        r["scores"] = {k: round(v, 4) for k, v in item_scores(r["response"], r["reference"]).items()}
        if r["index"] in losses:
            r["reference_loss"] = losses[r["index"]]
        if compare_base:
            r["base_scores"] = {k: round(v, 4) for k, v in item_scores(r["base_response"], r["reference"]).items()}
            if r["index"] in base_losses:
                r["base_reference_loss"] = base_losses[r["index"]]
        entries.append(r)
    models = {name: ("response", "scores", "reference_loss")}
    if compare_base:
        models = {"base": ("base_response", "base_scores", "base_reference_loss"), "lora": models[name]}
    overall = {m: summarize(entries, *keys) for m, keys in models.items()}
    tags = {}
    for m, keys in models.items():
        for tag, summary in by_tag(entries, *keys).items():
            tags.setdefault(tag, {})[m] = summary
    return {"labels": LABELS, "overall": overall, "by_tag": tags}
