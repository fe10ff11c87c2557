"""The batch test's generation through an OpenAI-compatible engine (e.g. vLLM serving the base model and
the adapter with --enable-lora): same results-file shape as `--mode test`, so the judge reads either.

With several samples per item (`--samples_per_item N`, sampled at a temperature above 0) every sample is
asked with its own seed, so each is cached apart, and the file keeps one entry per (item, sample) with its
`sample` number and `seed`: the rubric scores each, and `psydt-judge pairs` pairs the best against the worst.

Every reply is cached as it arrives (endpoint.Cache): a run killed half-way and started again asks only
for what is missing; the results file is written atomically once all items are there.
"""
from datetime import datetime

from psydt_lora.files import atomic_write_json
from psydt_lora.evaluation.batch_run import context_messages


def generate(items, samples: list[dict], output_file, meta: dict, system_override=None, progress=True) -> dict:
    """`samples`: one {"response": Endpoint, "base_response": Endpoint (optional)} per sample (one alone: the
    file has no sample fields); each item's context (ending with the client's turn) is sent to each; returns
    and writes the report dict."""
    planned = [(item, *context_messages(item, system_override)) for item in items]
    sampled = len(samples) > 1
    grid = [[_entry(item, msgs, reference) for _ in samples] for item, msgs, reference in planned]
    for k, endpoints in enumerate(samples):
        for field, endpoint in endpoints.items():
            answers = endpoint.ask_all([("generate", msgs) for _, msgs, _ in planned],
                                       desc=_desc(endpoint, k, sampled), progress=progress)
            for row, answer in zip(grid, answers):
                entry = row[k]
                if sampled:
                    entry.update(sample=k, seed=endpoint.config.seed)
                entry[field] = answer.text
                entry[f"{field}_finish_reason"] = answer.finish_reason
                if answer.error:
                    entry[f"{field}_error"] = answer.error
    out = [entry for row in grid for entry in row]
    first = samples[0]
    report = {"meta": {**meta, "finished": datetime.now().isoformat(timespec="seconds"), "items": len(planned),
                       "samples_per_item": len(samples), "generators": {f: e.config.describe() for f, e in first.items()},
                       "usage": {f: _usage([s[f] for s in samples]) for f in first},
                       "failed": {f: sum(1 for r in out if f"{f}_error" in r) for f in first}},
              "results": out}
    if sampled:
        report["meta"]["seeds"] = [s["response"].config.seed for s in samples]
    atomic_write_json(output_file, report)
    return report


def _desc(endpoint, k: int, sampled: bool) -> str:
    return f"生成（{endpoint.config.model}" + (f"，第 {k + 1} 个样本，seed {endpoint.config.seed}）" if sampled else "）")


def _usage(endpoints) -> dict:
    """One field's usage summed over its samples' endpoints."""
    rows = [vars(e.usage) for e in endpoints]
    out = {k: sum(r[k] for r in rows) for k in rows[0] if k != "failures"}
    out["failures"] = {}
    for r in rows:
        for error, n in r["failures"].items():
            out["failures"][error] = out["failures"].get(error, 0) + n
    return out


def _entry(item, msgs, reference) -> dict:
    turns = [m for m in msgs if m["role"] != "system"]
    return {"index": item.index, "id": item.id, "normalizedTag": item.tag,
            "history_turns": sum(1 for m in msgs if m["role"] == "user") - 1,
            "context": turns, "history_tail": turns[-3:], "reference": reference}
