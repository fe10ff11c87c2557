"""The merged model folder: base + adapter weights in one safetensors model that plain transformers,
vLLM or llama.cpp's converter load, with the training defaults written into it (chat template,
default system prompt, sampling settings) and a model card."""
import copy
from pathlib import Path

from psydt_lora.export.template import with_training_defaults
from psydt_lora.files import write_dir
from psydt_lora.inference.generation import GenerationSettings, stop_ids


CARD_FILE = "README.md"


def generation_config(model, tokenizer, settings):
    """The model's own generation config with the README's recommended sampling settings and the
    end-of-turn token as a stop token (engines such as vLLM read their defaults from it)."""
    config = copy.deepcopy(model.generation_config)
    config.do_sample = settings.do_sample
    config.temperature = settings.temperature if settings.do_sample else None
    config.top_p = settings.top_p if settings.do_sample else None
    if not settings.do_sample:
        config.top_k = None
    config.repetition_penalty = settings.repetition_penalty
    config.max_new_tokens = settings.max_new_tokens
    config.eos_token_id = stop_ids(tokenizer, model)
    config.pad_token_id = tokenizer.pad_token_id
    return config


def save_merged(model, tokenizer, folder, *, system_prompt=None, settings=None, card: str | None = None) -> None:
    """Write the merged model to `folder` atomically (an interrupted save leaves the old folder or
    none). `model` is already merged (`merge_and_unload`). The tokenizer object is left as it was."""
    settings = settings or GenerationSettings()

    def fill(tmp):
        model.save_pretrained(str(tmp), safe_serialization=True)
        original = tokenizer.chat_template
        tokenizer.chat_template = with_training_defaults(original, system_prompt)
        try:
            tokenizer.save_pretrained(str(tmp))
        finally:
            tokenizer.chat_template = original
        generation_config(model, tokenizer, settings).save_pretrained(str(tmp))
        if card is not None:
            (Path(tmp) / CARD_FILE).write_text(card, encoding="utf-8")

    write_dir(Path(folder), fill)
