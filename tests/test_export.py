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
    assert info.system_prompt == LEARNED == SYSTEM
    model = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(exported))
    for d in DIALOGUES:
        for end in (2, 4):  # the first and the second reply of each dialogue, no system message given
            plain = tok.apply_chat_template(d["messages"][1:end], add_generation_prompt=True)["input_ids"]
            merged_reply, _ = generate_batch(model, tok, [plain], GREEDY)
            adapter_reply, _ = generate_batch(adapter_model, adapter_tok, [prompt_ids(adapter_tok, d["messages"][:end])],
                                              GREEDY)
            assert merged_reply == adapter_reply == [d["messages"][end]["content"]]


def test_merged_folder_carries_the_recommended_settings_and_a_card(exported, memorised_adapter, tiny_model_dir):
    gen = json.loads((exported / "generation_config.json").read_text("utf-8"))
    defaults = GenerationSettings()
    assert (gen["do_sample"], gen["temperature"], gen["top_p"], gen["repetition_penalty"]) == \
        (True, defaults.temperature, defaults.top_p, defaults.repetition_penalty)
    assert gen["max_new_tokens"] == defaults.max_new_tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(exported))
    assert tok.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"]
    card = (exported / "README.md").read_text("utf-8")
    from psydt_lora.export.run import lora_rank
    from psydt_lora.run_record import RunRecord

    run = RunRecord.read(memorised_adapter)  # either record format
    front = card.split("---\n")[1]
    assert "license: \"apache-2.0\"" in front and "datasets:" in front
    # trained on a local folder, not on weights fetched from the hub: no hub id is claimed for it
    assert "base_model:" not in front and "Qwen/Qwen3-1.7B" not in card and f"本地文件夹 `{tiny_model_dir}`" in card
    for must in ("12356", "400-161-9995", "不能替代", "lora_r", str(lora_rank(run)), "| 实际训练步数 | 120 |",
                 str(run.metrics["final_train_loss"]), "vllm serve", "--max-lora-rank 16", LEARNED):
        assert must in card, must


def test_the_gguf_recipes_name_the_real_base_folder(tmp_path):
    from psydt_lora.export.recipes import gguf_recipes

    base = tmp_path / "models" / "my-base"
    lines = gguf_recipes(tmp_path / "gguf", ["merged-f16.gguf"], "lora_adapter-f16.gguf", None, base)
    text = "\n".join(lines)
    assert f"convert_hf_to_gguf.py {base} --outtype f16 --outfile my-base-f16.gguf" in text
    assert f"llama-server -m my-base-f16.gguf --lora {tmp_path / 'gguf' / 'lora_adapter-f16.gguf'}" in text
    assert "Qwen" not in text


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


# --- getting llama.cpp's converters: the PyPI download replaced at its boundary ---

def fake_sdist(folder: Path) -> Path:
    """A tar.gz laid out like the llama-cpp-python sdist: the converters under vendor/llama.cpp/, and more."""
    import tarfile

    root = folder / "llama_cpp_python-0.3.36"
    files = {"vendor/llama.cpp/convert_hf_to_gguf.py": "# full", "vendor/llama.cpp/convert_lora_to_gguf.py": "# lora",
             "vendor/llama.cpp/conversion/__init__.py": "", "vendor/llama.cpp/gguf-py/gguf/__init__.py": "",
             "vendor/llama.cpp/LICENSE": "MIT", "vendor/llama.cpp/ggml/src/ggml.c": "big", "llama_cpp/llama.py": "x"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    sdist = folder / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    return sdist


def test_converters_come_from_the_sdist_once_and_keep_only_what_converting_needs(tmp_path, monkeypatch, capsys):
    from psydt_lora.export import gguf

    calls = []
    monkeypatch.setenv("PSYDT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf, "download_sdist", lambda dest: calls.append(dest) or fake_sdist(tmp_path))
    folder = gguf.converters()
    assert folder == tmp_path / "cache" / f"llama.cpp-{gguf.LLAMA_CPP_PYTHON}"
    kept = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert kept == ["LICENSE", "conversion/__init__.py", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py",
                    "gguf-py/gguf/__init__.py"]
    assert "PyPI" in capsys.readouterr().out
    assert gguf.converters() == folder and len(calls) == 1  # cached: no second download


def test_missing_tools_get_one_message_with_the_command(tmp_path, monkeypatch):
    import subprocess
    import sys

    from psydt_lora.errors import PsyDTError
    from psydt_lora.export import gguf

    with pytest.raises(PsyDTError, match="--llama_cpp .* convert_hf_to_gguf.py"):
        gguf.converters(tmp_path)
    monkeypatch.setenv("PSYDT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "No route to host"))
    with pytest.raises(PsyDTError, match="pip download --no-deps --no-binary :all:.*llama-cpp-python==") as err:
        gguf.converters()
    assert "No route to host" in str(err.value) and not (tmp_path / "cache").exists()
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # `import sentencepiece` now fails
    with pytest.raises(PsyDTError, match="pip install sentencepiece"):
        gguf.converters()


# --- GGUF: llama.cpp's converters on a tiny model of Qwen3's real vocabulary (llama.cpp must recognise the
# tokenizer), then llama.cpp itself loading the files when llama-cpp-python is at hand ---

LLAMA_HELPER = Path(__file__).parent / "llama_greedy.py"


def llama_python() -> str | None:
    """A Python with llama-cpp-python: $PSYDT_LLAMA_PYTHON, or this one when it has the package."""
    import importlib.util
    import sys

    if os.environ.get("PSYDT_LLAMA_PYTHON"):
        return os.environ["PSYDT_LLAMA_PYTHON"]
    return sys.executable if importlib.util.find_spec("llama_cpp") else None


@pytest.fixture(scope="module")
def real_shaped(tmp_path_factory, real_tokenizer):
    """A random Qwen3 with the real tokenizer and the real config's vocabulary at tiny width, and a random
    LoRA adapter on it (B not zero, so merging changes the weights)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, Qwen3ForCausalLM

    from conftest import REAL_TOKENIZER

    tmp = tmp_path_factory.mktemp("real-shaped")
    config = AutoConfig.from_pretrained(str(REAL_TOKENIZER))
    config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, layer_types=["full_attention"] * 2,
                       initializer_range=0.2))  # wide logits: greedy choices far from ties, robust to f16/q8_0
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(str(tmp / "base"))
    real_tokenizer.save_pretrained(str(tmp / "base"))
    torch.manual_seed(1)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    lora.save_pretrained(str(tmp / "lora_adapter"))
    return tmp / "base", tmp / "lora_adapter"


@pytest.fixture(scope="module")
def gguf_export(real_shaped, tmp_path_factory):
    from psydt_lora.errors import PsyDTError
    from psydt_lora.export import gguf

    try:
        tools = gguf.converters()
    except PsyDTError as err:  # the first use fetches the llama-cpp-python sdist from PyPI
        if os.environ.get("CI"):  # CI reaches PyPI: a fetch that fails there is a bug, not a missing tool
            raise
        pytest.skip(f"llama.cpp's converters are not cached and could not be fetched: {err}")
    base, adapter = real_shaped
    merged = tmp_path_factory.mktemp("gguf") / "merged"
    assert inference_psydt_lora.main(["--model_path", str(base), "--adapter_path", str(adapter), "--save_merged",
                                      str(merged), "--export", "gguf,ollama", "--gguf_types", "f32,f16,q8_0",
                                      "--system_prompt", LEARNED]) == 0
    return merged, gguf.output_dir(merged), tools


def gguf_fields(tools, path, monkeypatch) -> dict:
    monkeypatch.syspath_prepend(str(tools / "gguf-py"))  # the converters' own gguf library
    from gguf import GGUFReader

    return {name: field.contents() for name, field in GGUFReader(str(path)).fields.items()
            if not name.startswith("tokenizer.ggml.")}


@pytest.mark.slow
def test_gguf_files_carry_the_model_the_adapter_and_the_training_template(gguf_export, monkeypatch):
    merged, out, tools = gguf_export
    names = sorted(p.name for p in out.iterdir())
    assert names == ["Modelfile", "lora_adapter-f16.gguf", "merged-f16.gguf", "merged-f32.gguf", "merged-q8_0.gguf"]
    template = (merged / "chat_template.jinja").read_text("utf-8")
    types = {}
    for kind in ("f32", "f16", "q8_0"):
        fields = gguf_fields(tools, out / f"merged-{kind}.gguf", monkeypatch)
        assert fields["general.architecture"] == "qwen3" and fields["qwen3.block_count"] == 2
        assert fields["tokenizer.chat_template"] == template  # llama.cpp --jinja renders the training prompt
        types[kind] = fields["general.file_type"]
    assert len(set(types.values())) == 3  # three different encodings, not one file thrice
    lora = gguf_fields(tools, out / "lora_adapter-f16.gguf", monkeypatch)
    assert lora["general.type"] == "adapter" and lora["adapter.type"] == "lora" and lora["adapter.lora.alpha"] == 16
    assert "FROM ./merged-q8_0.gguf" in (out / "Modelfile").read_text("utf-8").splitlines()


def hf_greedy(model, ids, n, stop) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, top_k=None, top_p=None,
                             temperature=None, repetition_penalty=1.0)
    new = out[0, len(ids):].tolist()
    return new[:next((i for i, t in enumerate(new) if t in stop), len(new))]


@pytest.mark.slow
def test_llama_cpp_loads_the_gguf_and_answers_like_the_hf_model(gguf_export, real_shaped, tmp_path):
    """The merged GGUF (f32, f16, q8_0) and base GGUF + LoRA GGUF in llama.cpp: the same tokens for the
    prompt text and the same greedy tokens as the merged HF model, for 3 histories."""
    import subprocess

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from psydt_lora.export import gguf

    python = llama_python()
    if python is None:
        pytest.skip("llama-cpp-python is not installed (it builds llama.cpp from source: about an hour on 2 CPU "
                    "cores); set PSYDT_LLAMA_PYTHON to a Python that has it")
    merged, out, tools = gguf_export
    base_gguf = gguf.convert_model(tools, real_shaped[0], tmp_path, "f32")
    tok = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    stop = model.generation_config.eos_token_id
    prompts = []
    for turns in (1, 2, 3):
        ids = tok.apply_chat_template(history(turns, None), add_generation_prompt=True)["input_ids"]
        prompts.append({"ids": ids, "text": tok.decode(ids), "hf": hf_greedy(model, ids, 8, stop)})
    runs = [{"model": str(out / f"merged-{k}.gguf")} for k in ("f32", "f16", "q8_0")]
    runs.append({"model": str(base_gguf), "lora": str(out / "lora_adapter-f16.gguf")})
    job = {"runs": runs, "prompts": prompts, "n": 8, "stop": stop}
    done = subprocess.run([python, str(LLAMA_HELPER)], input=json.dumps(job), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)["runs"]
    agree = {}
    for run, got in zip(runs, results):
        assert got["tokenized"] == [p["ids"] for p in prompts], run
        agree[run["model"].rsplit("/", 1)[-1] + (" + lora" if run.get("lora") else "")] = [
            next((i for i, (a, b) in enumerate(zip(g, p["hf"])) if a != b), len(p["hf"]))
            for g, p in zip(got["greedy"], prompts)]
    print(f"[llama.cpp] greedy tokens equal to transformers' before the first difference (of 8): {agree}")
    for name, same in agree.items():
        # q8_0 rounds every weight to 8 bits: its greedy path may leave the exact one after a few tokens
        assert all(n >= (4 if "q8_0" in name else 8) for n in same), (name, same)


def test_the_card_names_the_data_the_adapter_was_trained_on():
    """A run on other corpora must not be carded as PsyDTCorpus (Apache-2.0): the recorded datasets are named."""
    from psydt_lora.export.card import model_card
    from psydt_lora.inference.generation import GenerationSettings
    from psydt_lora.run_record import RunRecord

    mixed = {"data": {"datasets": {"smilechat": {"name": "smilechat", "location": "data/smile", "format": "smilechat"},
                                   "cpsycoune": {"name": "cpsycoune", "location": "data/cpe", "format": "cpsycoune"}}}}
    card = model_card(RunRecord.from_json(mixed), base="Qwen/Qwen3-1.7B", adapter="a", system_prompt=None,
                      settings=GenerationSettings(), recipes=[])
    assert "PsyDTCorpus" not in card and "`smilechat`" in card and "`cpsycoune`" in card
    assert "datasets: []" in card.split("---\n")[1]
    assert "PsyDTCorpus" in model_card(None, base="b", adapter="a", system_prompt=None, settings=GenerationSettings(),
                                       recipes=[])
