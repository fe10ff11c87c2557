"""Shared fixtures: a tiny random Qwen3 with a small character-level tokenizer whose chat template
behaves like Qwen3's (ChatML, empty think block in the generation prompt when thinking is off),
and the real Qwen3 tokenizer / PsyDTCorpus samples from ../shared/assets when present."""
import json
import os
import tempfile
from pathlib import Path

import pytest
from judge_server import JudgeServer

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
REAL_TOKENIZER = ASSETS / "qwen3-tokenizer"
REAL_SAMPLE = ASSETS / "psydt-sample" / "train.json"
SHAPED_TRAIN = ASSETS / "psydt-shaped" / "train.json"
SHAPED_TEST = ASSETS / "psydt-shaped" / "test.json"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The inference CLI's default second safety layer is a Qwen3Guard checkpoint fetched from the hub; tests
# that are not about it run with the lexicon alone (tests/test_guard.py covers the default path).
os.environ.setdefault("PSYDT_SAFETY_MODEL", "none")
# A model layer passes a start-up check before it is trusted (safety/guard_check.py); the tiny random models
# are not meant to pass it, so tests that use them as a layer trust them unchecked (tests/test_guard.py turns it on).
os.environ.setdefault("PSYDT_GUARD_CHECK", "off")
# The per-user cache (samples of read-only data, hub datasets) goes to a temporary folder, not the tester's home.
os.environ.setdefault("PSYDT_CACHE_DIR", tempfile.mkdtemp(prefix="psydt-test-cache-"))

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

QWEN3_LIKE_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

SYSTEM = "你是一位温和、专业的心理咨询师。"
DIALOGUES = [
    {
        "id": "d0",
        "normalizedTag": "情绪",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "我最近睡不好，总是很焦虑。"},
            {"role": "assistant", "content": "听起来你最近压力很大，能说说是什么让你焦虑吗？"},
            {"role": "user", "content": "工作上的事情太多了。"},
            {"role": "assistant", "content": "工作量大确实让人紧张，我们一起看看哪些事情最重要。"},
        ],
    },
    {
        "id": "d1",
        "normalizedTag": "婚恋",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "我和男朋友吵架了。"},
            {"role": "assistant", "content": "吵架之后你现在感觉怎么样？"},
            {"role": "user", "content": "很难过，也很生气。"},
            {"role": "assistant", "content": "难过和生气都是可以理解的情绪，你愿意多讲讲吗？"},
        ],
    },
]


def single_turn_split(dialogues):
    """The test-file shape: one item per assistant reply, holding the history up to that reply."""
    items = []
    for d in dialogues:
        for i, m in enumerate(d["messages"]):
            if m["role"] == "assistant":
                items.append({"id": d["id"], "normalizedTag": d["normalizedTag"], "messages": d["messages"][: i + 1]})
    return items


def _charset():
    chars = set("\n \t")
    chars.update(chr(c) for c in range(33, 127))
    chars.update("，。？！：；、“”‘’（）《》…—")
    for d in DIALOGUES:
        for m in d["messages"]:
            chars.update(m["content"])
    # everyday characters used by the chat/safety tests
    chars.update("你好我想死了不活没意思谢谢再见今天心情很差有点累帮助热线哪里生气难过开心第轮回复告诉慢说聊什么")
    return sorted(chars)


def build_tiny_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + ["<unk>"] + _charset())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.add_tokens(["<think>", "</think>"])  # like Qwen3: added tokens, but not "special" (decode keeps them)
    tok.chat_template = QWEN3_LIKE_TEMPLATE
    tok.save_pretrained(str(folder))
    return tok


def build_tiny_model(folder: Path, layers: int = 2, hidden: int = 64, seed: int = 0):
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tok = build_tiny_tokenizer(folder)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="session")
def real_tokenizer():
    if not (REAL_TOKENIZER / "vocab.json").is_file():
        pytest.skip("../shared/assets/qwen3-tokenizer is not present (only in the developers' checkout and CI)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(REAL_TOKENIZER))


def require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is not present (only in the developers' checkout and CI)")
    return path


@pytest.fixture
def data_files(tmp_path):
    train = tmp_path / "train.json"
    test = tmp_path / "test.json"
    train.write_text(json.dumps(DIALOGUES, ensure_ascii=False), "utf-8")
    test.write_text(json.dumps(single_turn_split(DIALOGUES), ensure_ascii=False), "utf-8")
    return train, test


def memorise(model_dir, train_file, out_dir, extra=()):
    """Train the tiny model until it reproduces every reply of `train_file` greedily: 120 steps, about a
    minute on a 2-core CPU (64 s of CPU time measured; 223 s of wall time with the machine shared 6 ways).
    Session-scoped below, so the suite pays it once."""
    import train_psydt_lora

    argv = [
        "--model_local_dir", str(model_dir), "--train_file", str(train_file), "--no-do_eval",
        "--output_dir", str(out_dir), "--report_to", "none", "--max_steps", "120",
        "--learning_rate", "1e-2", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0",
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
        "--logging_steps", "20", "--save_steps", "1000", "--no-gradient_checkpointing", *extra,
    ]
    assert train_psydt_lora.main(argv) == 0
    return out_dir / "lora_adapter"


@pytest.fixture
def judge():
    """A scripted OpenAI-compatible judge on a free port (tests/judge_server.py), stopped after the test."""
    server = JudgeServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def memorised_adapter(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memorised")
    train = tmp / "train.json"
    train.write_text(json.dumps(DIALOGUES, ensure_ascii=False), "utf-8")
    return memorise(tiny_model_dir, train, tmp / "out")


def _checkout_entries() -> set:
    return {str(p.relative_to(ROOT)) for folder in (ROOT, ROOT / "output", ROOT / "data") if folder.is_dir()
            for p in folder.iterdir()}


@pytest.fixture(autouse=True)
def leaves_nothing_in_the_checkout():
    """Every test writes under its tmp_path: the checkout gains no output/, Qwen/, data or results."""
    before = _checkout_entries()
    yield
    new = _checkout_entries() - before
    assert not new, f"this test left files in the checkout: {sorted(new)}"
