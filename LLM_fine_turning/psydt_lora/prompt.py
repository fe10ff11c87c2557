"""The one prompt rendering shared by training and inference.

The model's own chat template is the only source of the prompt format: a context is
`apply_chat_template(history, add_generation_prompt=True, enable_thinking=False)`. For Qwen3 that is
the ChatML history (earlier replies without think blocks) followed by
`<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n` -- the empty think block belongs to the context
and is never a training target. A reply ends with the tokenizer's end-of-turn token (`<|im_end|>`).
"""
import hashlib
import multiprocessing
import os
import re

# The system prompt for dialogues that bring none: training adds it, chat / serve use it when the adapter names none.
DEFAULT_SYSTEM = "你是一位专业、温暖的心理咨询师，善于倾听，能够共情来访者并给予支持和引导。"
_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


def strip_think(text: str) -> str:
    """Remove `<think>...</think>` blocks; an unterminated `<think>` drops everything after it.
    A lone `</think>` (the opening tag was part of the prompt) drops everything before it."""
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text:
        text = text.split("</think>")[-1]
    if "<think>" in text:
        text = text.split("<think>")[0]
    return text.strip()


def _template_kwargs(tokenizer) -> dict:
    # What `apply_chat_template` passes to the template besides the messages.
    return {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}


def _render_chunk(job) -> list[str]:
    """The template engine call behind `render` and `render_many` (a tuple, so worker processes can take it)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    template, kwargs, conversations, add_generation_prompt, enable_thinking = job
    out, _ = render_jinja_template(conversations=conversations, chat_template=template,
                                   add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking, **kwargs)
    return out


def render(tokenizer, messages, add_generation_prompt: bool, enable_thinking: bool = False) -> str:
    """Render `messages` with the tokenizer's chat template (same result as `apply_chat_template`,
    without its per-call overhead, which matters for 85k contexts)."""
    job = (tokenizer.get_chat_template(), _template_kwargs(tokenizer), [messages], add_generation_prompt, enable_thinking)
    return _render_chunk(job)[0]


PARALLEL_FROM = 1000  # render in worker processes from this many conversations on


def render_many(tokenizer, conversations, add_generation_prompt: bool, enable_thinking: bool = False) -> list[str]:
    """`render` for many conversations; big batches use all CPU cores (same template, same result)."""
    workers = min(os.cpu_count() or 1, 8)
    if len(conversations) < PARALLEL_FROM or workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [render(tokenizer, c, add_generation_prompt, enable_thinking) for c in conversations]
    template, kwargs = tokenizer.get_chat_template(), _template_kwargs(tokenizer)
    size = -(-len(conversations) // (workers * 4))
    jobs = [(template, kwargs, conversations[i:i + size], add_generation_prompt, enable_thinking)
            for i in range(0, len(conversations), size)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return [text for chunk in pool.map(_render_chunk, jobs) for text in chunk]


def encode_many(tokenizer, texts) -> list[list[int]]:
    """Token ids of many texts (no special tokens added); skips offset bookkeeping when the
    tokenizer's Rust backend offers it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def clean_history(messages) -> list[dict]:
    """History as the model should see it: think blocks removed from earlier replies."""
    out = []
    for m in messages:
        content = m["content"]
        if m["role"] == "assistant":
            content = strip_think(content)
        out.append({"role": m["role"], "content": content})
    return out


def render_prompt(tokenizer, messages, enable_thinking: bool = False) -> str:
    """The context the model answers: history (ending with a user turn) + generation prompt."""
    return render(tokenizer, clean_history(messages), add_generation_prompt=True, enable_thinking=enable_thinking)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, messages, enable_thinking: bool = False) -> list[int]:
    return encode(tokenizer, render_prompt(tokenizer, messages, enable_thinking))


def round_starts(messages) -> list[int]:
    """Where each round (a user turn and the replies after it) starts, after an optional system prompt."""
    first = 1 if messages and messages[0]["role"] == "system" else 0
    starts = [i for i in range(first, len(messages)) if messages[i]["role"] == "user"]
    if not starts or starts[0] != first:
        starts.insert(0, first)
    return starts


def oldest_round_that_fits(starts: list[int], context_len, budget: int) -> int:
    """The truncation rule, for training samples and chat history alike: the index of the oldest round
    (by its first message, from `round_starts`) from which the context -- system prompt + the rounds from
    there on + generation prompt, `context_len(first message)` tokens -- is at most `budget` tokens;
    the most recent round when none is."""
    for r, start in enumerate(starts[:-1]):
        if context_len(start) <= budget:
            return r
    return len(starts) - 1


def fit_history(tokenizer, messages, budget: int, enable_thinking: bool = False):
    """Context ids for `messages` (history ending with a user turn) in at most `budget` tokens:
    keep the system prompt, drop the oldest whole rounds. The most recent round always stays.
    Returns (ids, dropped_rounds); the ids may exceed `budget` when even the last round alone does not
    fit -- the caller decides what to do then."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rendered = {}

    def ids(start):
        if start not in rendered:
            rendered[start] = prompt_ids(tokenizer, system + messages[start:], enable_thinking)
        return rendered[start]

    starts = round_starts(messages)
    dropped = oldest_round_that_fits(starts, lambda start: len(ids(start)), budget)
    return ids(starts[dropped]), dropped


def generation_prompt(tokenizer, enable_thinking: bool = False) -> str:
    """The text the template appends for `add_generation_prompt` (Qwen3, thinking off:
    `<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n`)."""
    probe = [{"role": "user", "content": "x"}]
    with_prompt = render(tokenizer, probe, True, enable_thinking)
    without = render(tokenizer, probe, False, enable_thinking)
    if not with_prompt.startswith(without) or with_prompt == without:
        raise ValueError("chat template: add_generation_prompt does not append a suffix")
    return with_prompt[len(without):]


def end_of_turn_id(tokenizer) -> int:
    """The token that closes a reply (Qwen3: <|im_end|>, which is also its eos_token)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token; cannot tell where a reply ends")
    return tokenizer.eos_token_id


def prompt_format(tokenizer, enable_thinking: bool = False) -> dict:
    """A description of the prompt format, saved with the adapter and checked by inference."""
    template = tokenizer.get_chat_template()
    return {
        "renderer": "tokenizer.chat_template",
        "chat_template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
        "enable_thinking": enable_thinking,
        "generation_prompt": generation_prompt(tokenizer, enable_thinking),
        "end_of_turn": tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)),
    }
