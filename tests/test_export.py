"""Exporting the fine-tune: the merged folder renders the training prompt by default (real Qwen3 template
and the tests' one), says the same as the adapter, carries the recommended settings and a model card."""
import json
import os
from pathlib import Path

import pytest

from conftest import DIALOGUES, SYSTEM
import inference_psydt_lora
from psydt_lora.export.merged import save_merged
from psydt_lora.export.template import with_training_defaults
from psydt_lora.inference.generation import GenerationSettings, generate_batch
from psydt_lora.prompt import prompt_ids, render_prompt

GREEDY = GenerationSettings(max_new_tokens=40, do_sample=False)
LEARNED = "你是一位温和、专业的心理咨询师。"  # the system prompt the tiny adapter is trained with (conftest.SYSTEM)
OTHER_SYSTEM = "你好，我想聊聊今天的心情。"


def history(turns: int, system: str | None) -> list[dict]:
    """`turns` user turns with the replies between them, ending with a user turn; the second reply
    carries a think block, as a reply saved with one would."""
    pool = [m for d in DIALOGUES for m in d["messages"] if m["role"] != "system"]
    users = [m["content"] for m in pool if m["role"] == "user"]
    replies = [m["content"] for m in pool if m["role"] == "assistant"]
    out = [{"role": "system", "content": system}] if system else []
    for i in range(turns):
        if i:
            reply = replies[(i - 1) % len(replies)]
            out.append({"role": "assistant", "content": f"<think>\nxyz\n</think>\n\n{reply}" if i == 2 else reply})
        out.append({"role": "user", "content": users[i % len(users)]})
    return out


@pytest.fixture(scope="module", params=["real", "tiny"])
def merged_tokenizers(request, tmp_path_factory, tiny_model_dir):
    """(the tokenizer training used, the one a merged folder saved with it loads back)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = request.getfixturevalue("real_tokenizer") if request.param == "real" else \
        AutoTokenizer.from_pretrained(str(tiny_model_dir))
    before = source.chat_template
    folder = tmp_path_factory.mktemp(f"merged-{request.param}")
    save_merged(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), source, folder, system_prompt=LEARNED)
    assert source.chat_template == before  # the caller's tokenizer keeps the template training used
    return source, AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("turns", [1, 2, 5])
@pytest.mark.parametrize("system", [None, OTHER_SYSTEM])
def test_plain_apply_chat_template_is_the_training_prompt(merged_tokenizers, turns, system):
    source, merged = merged_tokenizers
    messages = history(turns, system)
    expected = prompt_ids(source, messages if system else [{"role": "system", "content": LEARNED}] + messages)
    got = merged.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert got == expected
    assert merged.decode(got).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_thinking_is_still_there_when_asked_for(merged_tokenizers):
    source, merged = merged_tokenizers
    messages = history(2, OTHER_SYSTEM)
    asked = merged.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=True)
    assert asked == render_prompt(source, messages, enable_thinking=True)
    assert not asked.endswith("</think>\n\n")


def test_the_default_system_prompt_is_any_text_verbatim(real_tokenizer):
    from psydt_lora.prompt import render

    odd = '他说："别担心"\n第二行 {{ x }} {% raw %} \\n 反斜杠\\ 和 \'单引号\''
    template = with_training_defaults(real_tokenizer.chat_template, odd)
    assert with_training_defaults(template, odd) == template  # exporting an export keeps one preamble
    real_tokenizer.chat_template, before = template, real_tokenizer.chat_template
    try:
        text = real_tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True,
                                                  tokenize=False)
    finally:
        real_tokenizer.chat_template = before
    assert text == render(real_tokenizer, [{"role": "system", "content": odd}, {"role": "user", "content": "你好"}],
                          add_generation_prompt=True)


@pytest.fixture(scope="module")
def exported(tiny_model_dir, memorised_adapter, tmp_path_factory):
    merged = tmp_path_factory.mktemp("export") / "merged"
    argv = ["--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--save_merged", str(merged)]
    assert inference_psydt_lora.main(argv) == 0
    return merged


def test_merged_model_with_its_plain_template_says_what_the_adapter_says(exported, tiny_model_dir, memorised_adapter):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from psydt_lora.models import load_for_inference

    adapter_model, adapter_tok, info, _ = load_for_inference(tiny_model_dir, memorised_adapter, device="cpu")
    assert info["system_prompt"] == LEARNED == SYSTEM
    model = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(exported))
    for d in DIALOGUES:
        for end in (2, 4):  # the first and the second reply of each dialogue, no system message given
            plain = tok.apply_chat_template(d["messages"][1:end], add_generation_prompt=True)["input_ids"]
            merged_reply, _ = generate_batch(model, tok, [plain], GREEDY)
            adapter_reply, _ = generate_batch(adapter_model, adapter_tok, [prompt_ids(adapter_tok, d["messages"][:end])],
                                              GREEDY)
            assert merged_reply == adapter_reply == [d["messages"][end]["content"]]


def test_merged_folder_carries_the_recommended_settings_and_a_card(exported, memorised_adapter):
    gen = json.loads((exported / "generation_config.json").read_text("utf-8"))
    defaults = GenerationSettings()
    assert (gen["do_sample"], gen["temperature"], gen["top_p"], gen["repetition_penalty"]) == \
        (True, defaults.temperature, defaults.top_p, defaults.repetition_penalty)
    assert gen["max_new_tokens"] == defaults.max_new_tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(exported))
    assert tok.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"]
    card = (exported / "README.md").read_text("utf-8")
    run = json.loads((memorised_adapter / "psydt_run.json").read_text("utf-8"))
    front = card.split("---\n")[1]
    assert "license: \"apache-2.0\"" in front and "datasets:" in front and "base_model:" in front
    for must in ("12356", "400-161-9995", "不能替代", "lora_r", str(run["args"]["lora_r"]),
                 str(run["metrics"]["final_train_loss"]), "vllm serve", "--max-lora-rank 16", LEARNED):
        assert must in card, must


def test_export_prints_the_serving_commands(tiny_model_dir, memorised_adapter, tmp_path, capsys):
    merged = tmp_path / "m"
    assert inference_psydt_lora.main(["--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter),
                                      "--save_merged", str(merged), "--system_prompt", OTHER_SYSTEM]) == 0
    out = capsys.readouterr().out
    assert f"vllm serve {merged}" in out and "--enable-lora --max-lora-rank 16" in out
    assert f"--lora-modules psydt={memorised_adapter}" in out
    from transformers import AutoTokenizer

    text = AutoTokenizer.from_pretrained(str(merged)).apply_chat_template(
        [{"role": "user", "content": "你好"}], add_generation_prompt=True, tokenize=False)
    assert text.startswith(f"<|im_start|>system\n{OTHER_SYSTEM}<|im_end|>")  # --system_prompt is the new default


@pytest.mark.parametrize("argv, words", [
    (["--export", "gguf"], "--export 需要 --save_merged"),
    (["--save_merged", "X", "--export", "gguf,onnx"], "不认识 onnx"),
    (["--save_merged", "X", "--export", "gguf", "--gguf_types", "q4_k_m"], "q4_k_m"),
])
def test_bad_export_flags_are_refused_before_any_load(argv, words, tmp_path, capsys):
    from psydt_lora.errors import run_cli

    argv = [a.replace("X", str(tmp_path / "m")) for a in argv]
    # --model_path does not exist either: the flags are checked first, in a moment
    assert run_cli(inference_psydt_lora.main, ["--model_path", str(tmp_path / "none"), *argv]) == 2
    assert words in capsys.readouterr().err


# --- Ollama Modelfile: its TEMPLATE rendered by Go's text/template, the way Ollama's server calls it ---

GO_RENDERER = Path(__file__).parent / "ollama_render" / "main.go"


@pytest.fixture(scope="session")
def go_render(tmp_path_factory):
    """A function rendering a Modelfile for a conversation with tests/ollama_render (compiled once)."""
    import shutil
    import subprocess

    if shutil.which("go") is None:
        pytest.skip("Go is not installed (apt-get install golang-go): the Modelfile TEMPLATE is rendered with Go's "
                    "text/template, Ollama's own engine")
    binary = tmp_path_factory.mktemp("go") / "ollama_render"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "GO111MODULE": "off"}
    subprocess.run(["go", "build", "-o", str(binary), str(GO_RENDERER)], check=True, env=env, capture_output=True)

    def render(modelfile, messages) -> str:
        done = subprocess.run([str(binary), str(modelfile)], input=json.dumps(messages, ensure_ascii=False),
                              capture_output=True, text=True, check=True)
        return done.stdout

    return render


@pytest.mark.parametrize("system", [None, OTHER_SYSTEM])
def test_modelfile_template_renders_the_training_prompt(merged_tokenizers, go_render, tmp_path, system, capsys):
    from psydt_lora.export.modelfile import write_modelfile

    source, merged = merged_tokenizers
    folder = tmp_path / "merged"
    merged.save_pretrained(str(folder))
    (folder / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
         "eos_token_id": [merged.convert_tokens_to_ids("<|im_end|>")]}), "utf-8")
    modelfile = write_modelfile(tmp_path, "m-q8_0.gguf", LEARNED, folder)
    for turns in (1, 3):
        messages = [{**m, "content": m["content"].split("</think>")[-1].lstrip("\n")}  # Ollama keeps thinking apart
                    for m in history(turns, system)]
        expected = render_prompt(source, messages if system else [{"role": "system", "content": LEARNED}] + messages)
        assert go_render(modelfile, messages) == expected
    text = modelfile.read_text("utf-8")
    for line in ("FROM ./m-q8_0.gguf", 'PARAMETER stop "<|im_end|>"', "PARAMETER temperature 0.7",
                 "PARAMETER top_p 0.8", "PARAMETER top_k 20", "PARAMETER repeat_penalty 1.05", f'SYSTEM """{LEARNED}"""'):
        assert line in text.splitlines(), line


def test_modelfile_refuses_what_it_cannot_say(real_tokenizer, tiny_tokenizer, capsys):
    from psydt_lora.errors import PsyDTError
    from psydt_lora.export.modelfile import go_template, modelfile_text

    with pytest.raises(PsyDTError, match='"""'):
        modelfile_text("m.gguf", go_template(real_tokenizer), 'a """ b', {}, ["<|im_end|>"])
    modelfile_text("m.gguf", go_template(real_tokenizer), "全角\u3000空格\u200b", {}, ["<|im_end|>"])
    assert "会被 Ollama 读取 Modelfile 时丢掉" in capsys.readouterr().out
    tiny_tokenizer.chat_template, before = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}" \
        "{% if add_generation_prompt %}[assistant] {% endif %}", tiny_tokenizer.chat_template
    try:
        with pytest.raises(PsyDTError, match="ChatML"):
            go_template(tiny_tokenizer)
    finally:
        tiny_tokenizer.chat_template = before
