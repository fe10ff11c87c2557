"""Round trip: train the tiny model until it memorises two dialogues, save the adapter, reload base +
adapter fresh, render a training context with the shared prompt code and decode greedily. Proves masking,
template parity, save and load together."""
import json

import pytest

from conftest import DIALOGUES, SYSTEM
from format_files import FORMATS, write_format

from psydt_lora.prompt import render_prompt, strip_think


def greedy_reply(model, tokenizer, history):
    import torch

    text = render_prompt(tokenizer, history)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=60, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    return strip_think(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))


@pytest.fixture(scope="module")
def memorised(memorised_adapter):
    return memorised_adapter


def test_adapter_reproduces_every_trained_reply(memorised, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(memorised))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(memorised)).eval()
    for d in DIALOGUES:
        msgs = d["messages"]
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                assert greedy_reply(model, tokenizer, msgs[:i]) == m["content"]
    # and the base model alone does not say these things: the adapter carries what was learned
    with model.disable_adapter():
        assert greedy_reply(model, tokenizer, DIALOGUES[0]["messages"][:2]) != DIALOGUES[0]["messages"][2]["content"]


def test_adapter_folder_holds_safetensors_tokenizer_and_run_json(memorised):
    names = {p.name for p in memorised.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json", "psydt_run.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    info = json.loads((memorised / "psydt_run.json").read_text("utf-8"))
    assert info["prompt_format"]["enable_thinking"] is False
    assert info["prompt_format"]["generation_prompt"] == "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert info["system_prompt"] == DIALOGUES[0]["messages"][0]["content"]
    assert info["data"]["train"]["samples"] == 2 and info["data"]["train"]["per_turn_samples"] == 4  # two packs
    assert info["base_model"]["signature"]["num_hidden_layers"] == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_trains_exactly_the_inference_prompt(tiny_tokenizer, tmp_path, fmt):
    """The same dialogues written in each format: the reader detects it, and every training sample is the
    chat template's rendering of the original history (ids and reply-only labels) -- format-blind from here."""
    from psydt_lora.data.datasets import build_mix, entries_from_args
    from psydt_lora.data.samples import IGNORE_INDEX, build_samples

    path = write_format(tmp_path, fmt, DIALOGUES)
    own = fmt in ("messages", "sharegpt", "alpaca")  # these carry the system prompt themselves; the rest get it added
    mix = build_mix(entries_from_args([str(path)], None, None), system_prompt=None if own else SYSTEM,
                    say=lambda *a: None)
    assert mix.rows[0]["format"] == fmt and mix.rows[0]["detected"]
    samples, _ = build_samples(mix.train, tiny_tokenizer, max_length=100_000)
    replies = [(i, k) for i, d in enumerate(DIALOGUES) for k, m in enumerate(d["messages"]) if m["role"] == "assistant"]
    assert [(s.dialogue_index, s.message_index) for s in samples] == replies
    tok = tiny_tokenizer
    for s in samples:
        msgs = DIALOGUES[s.dialogue_index]["messages"]
        k = s.message_index
        ctx = tok.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True, enable_thinking=False)
        ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        reply_ids = tok(msgs[k]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        assert s.input_ids == ctx_ids + reply_ids
        assert s.labels == [IGNORE_INDEX] * len(ctx_ids) + reply_ids
