"""The batch test's generation through an OpenAI-compatible engine (e.g. vLLM serving the base model and
the adapter with --enable-lora): same results-file shape as `--mode test`, so the judge reads either.

Every reply is cached as it arrives (endpoint.Cache): a run killed half-way and started again asks only
for what is missing; the results file is written atomically once all items are there.
"""
from datetime import datetime

from psydt_lora.files import atomic_write_json
from psydt_lora.evaluation.batch_run import context_messages


def generate(items, endpoints: dict, output_file, meta: dict, system_override=None, progress=True) -> dict:
    """`endpoints`: {"response": Endpoint, "base_response": Endpoint (optional)}; each item's context
    (ending with the client's turn) is sent to each; returns and writes the report dict."""
    planned = []
    for item in items:
        msgs, reference = context_messages(item, system_override)
        planned.append((item, msgs, reference))
    out = [_entry(item, msgs, reference) for item, msgs, reference in planned]
    for field, endpoint in endpoints.items():
        answers = endpoint.ask_all([("generate", msgs) for _, msgs, _ in planned],
                                   desc=f"生成（{endpoint.config.model}）", progress=progress)
        for entry, answer in zip(out, answers):
            entry[field] = answer.text
            entry[f"{field}_finish_reason"] = answer.finish_reason
            if answer.error:
                entry[f"{field}_error"] = answer.error
    report = {"meta": {**meta, "finished": datetime.now().isoformat(timespec="seconds"), "items": len(out),
                       "generators": {f: e.config.describe() for f, e in endpoints.items()},
                       "usage": {f: vars(e.usage) for f, e in endpoints.items()},
                       "failed": {f: sum(1 for r in out if f"{f}_error" in r) for f in endpoints}},
              "results": out}
    atomic_write_json(output_file, report)
    return report


def _entry(item, msgs, reference) -> dict:
    turns = [m for m in msgs if m["role"] != "system"]
    return {"index": item.index, "id": item.id, "normalizedTag": item.tag,
            "history_turns": sum(1 for m in msgs if m["role"] == "user") - 1,
            "context": turns, "history_tail": turns[-3:], "reference": reference}
