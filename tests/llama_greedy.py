"""Run by a Python that has llama-cpp-python (tests/test_export.py, bench/gguf_check.py): greedy tokens of
GGUF models for given prompts, and llama.cpp's own tokenization of the prompt texts.

stdin: {"runs": [{"model": path, "lora": path or null}], "prompts": [{"ids": [...], "text": "..."}], "n": N,
        "stop": [token ids that end a reply]}
stdout: {"runs": [{"greedy": [[...], ...], "tokenized": [[...], ...], "chat_template": "..."}]}
"""
import json
import sys

from llama_cpp import Llama


def run(model, lora, prompts, n, stop):
    llm = Llama(model_path=model, lora_path=lora, n_ctx=1024, n_threads=2, seed=0, verbose=False)
    greedy, tokenized = [], []
    for p in prompts:
        llm.reset()
        out = []
        for tok in llm.generate(p["ids"], top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if tok in stop or len(out) == n:
                break
            out.append(tok)
        greedy.append(out)
        tokenized.append(llm.tokenize(p["text"].encode("utf-8"), add_bos=False, special=True))
    return {"greedy": greedy, "tokenized": tokenized, "chat_template": llm.metadata.get("tokenizer.chat_template")}


if __name__ == "__main__":
    job = json.load(sys.stdin)
    json.dump({"runs": [run(r["model"], r.get("lora"), job["prompts"], job["n"], set(job["stop"])) for r in job["runs"]]}, sys.stdout)
