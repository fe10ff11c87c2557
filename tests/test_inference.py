"""The inference CLI: chat through piped stdin and a pseudo-terminal, batch test, merge and export."""
import contextlib
import io
import json
import os
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import DIALOGUES, ROOT, SHAPED_TEST, build_tiny_model, require
import inference_psydt_lora
from psydt_lora.inference.chat import Chat
from psydt_lora.errors import PsyDTError
from psydt_lora.inference.generation import GenerationSettings, ThinkFilter, prepare_context
from psydt_lora.models import load_for_inference
from psydt_lora.prompt import strip_think

SCRIPT = ROOT / "LLM_fine_turning" / "inference_psydt_lora.py"
GREEDY = GenerationSettings(max_new_tokens=40, do_sample=False)
D0 = DIALOGUES[0]["messages"]


def cli(args, **kw):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, **kw)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, memorised_adapter):
    return load_for_inference(tiny_model_dir, memorised_adapter, device="cpu")


def make_chat(loaded, lines, **kw):
    model, tok, info, _ = loaded
    out = io.StringIO()
    feed = iter(lines)

    def input_fn(prompt):
        out.write(prompt)
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    opts = dict(system=info.system_prompt, history_turns=6, context_limit=4096, can_compare=True)
    opts.update(kw)
    return Chat(model, tok, GREEDY, out=out, input_fn=input_fn, **opts), out


def test_chat_reproduces_the_memorised_dialogue_and_commands_work(loaded, tmp_path):
    transcript = tmp_path / "chat.json"
    chat, out = make_chat(loaded, [D0[1]["content"], D0[3]["content"], "/history", f"/save {transcript}",
                                   "/system 新的提示", "/system", "/reset", "/history", "/nope", "/help", "/exit"])
    chat.loop()
    text = out.getvalue()
    assert f"助手：{D0[2]['content']}" in text and f"助手：{D0[4]['content']}" in text
    assert "[1] 你：" in text and "[2] 你：" in text
    saved = json.loads(transcript.read_text("utf-8"))
    assert [r["assistant"] for r in saved["rounds"]] == [D0[2]["content"], D0[4]["content"]]
    assert stat.S_IMODE(transcript.stat().st_mode) == 0o600  # transcripts are private
    assert "[当前系统提示词] 新的提示" in text and "[还没有对话]" in text
    assert "未知命令 /nope" in text and "/compare" in text and text.rstrip().endswith("[再见]")


def test_history_window_keeps_the_last_rounds_and_the_system_prompt(loaded):
    chat, _ = make_chat(loaded, [], history_turns=1)
    chat.state.rounds = [("一", "甲"), ("二", "乙"), ("三", "丙")]
    assert len(chat.state.messages_for("四")) == 8  # the window is applied once, by prepare_turn
    assert [m["content"] for m in chat.prepare("四").messages] == [chat.state.system, "三", "丙", "四"]
    chat.state.history_turns = 0
    assert [m["content"] for m in chat.prepare("四").messages] == [chat.state.system, "四"]


def test_history_never_exceeds_the_context(loaded):
    model, tok, _, _ = loaded
    msgs = [{"role": "system", "content": "帮助"}]
    for i in range(30):
        msgs += [{"role": "user", "content": "我今天心情很差" * 3}, {"role": "assistant", "content": "谢谢你告诉我" * 3}]
    msgs.append({"role": "user", "content": "你好"})
    ids, dropped = prepare_context(tok, msgs, max_new_tokens=100, limit=400)
    assert len(ids) + 100 <= 400 and dropped > 0
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n帮助") and text.count("<|im_start|>user") >= 1
    chat, out = make_chat(loaded, ["我今天心情很差"] * 6, context_limit=160, history_turns=6)
    chat.loop()
    assert "省略了最早的" in out.getvalue()


def test_a_message_too_long_for_the_context_is_refused_not_generated(loaded):
    chat, out = make_chat(loaded, ["你好" * 150, D0[1]["content"]], context_limit=200)
    chat.loop()
    assert "这条消息太长" in out.getvalue() and "上下文长度 200" in out.getvalue()
    assert chat.state.rounds == [(D0[1]["content"], D0[2]["content"])]  # the long one is not in the history


def test_compare_shows_both_replies_and_keeps_the_base_reply_out_of_history(loaded):
    chat, out = make_chat(loaded, [D0[1]["content"], "/compare"])
    chat.loop()
    text = out.getvalue()
    assert text.count(D0[2]["content"]) == 1 and "[LoRA] 见上面的回复" in text and "[基础模型]：" in text
    assert chat.state.rounds == [(D0[1]["content"], D0[2]["content"])]
    # the random base model runs to --max_new_tokens and is told so; the memorised LoRA reply ends by itself
    assert text.count("处被截断") == 1 and text.index("[基础模型]") < text.index("处被截断")


class AdapterModel:
    """Stands in for a LoRA model in chat: /compare switches its adapter off."""

    @contextlib.contextmanager
    def disable_adapter(self):
        yield


def test_a_screened_reply_is_shown_stored_saved_and_compared_as_one_text(tiny_tokenizer, monkeypatch, tmp_path):
    from psydt_lora.inference import chat as chat_module
    from psydt_lora.inference.generation import Streamed
    from psydt_lora.safety.session import Safety

    replies = iter(["你可以试试，最无痛的死法是吃一整瓶安眠药。", "基础模型的回答"])

    def stream(model, tok, ids, settings, on_text, stop):
        text = next(replies)
        on_text(text)
        return Streamed(text, False, False)

    monkeypatch.setattr(chat_module, "stream_reply", stream)
    save = tmp_path / "t.json"
    chat, out = make_chat((AdapterModel(), tiny_tokenizer, SimpleNamespace(system_prompt="系统"), None),
                          ["今天心情很差", "/history", f"/save {save}", "/compare"], safety=Safety())
    chat.loop()
    text, safe = out.getvalue(), chat.safety.safe_reply()
    shown = text[:text.index("[1] 你：")]  # the turn itself, before /history
    assert "死法" not in text and "已被安全过滤" in shown and f"助手：{safe}" in shown  # shown as it is kept
    assert chat.state.rounds == [("今天心情很差", safe)] and f"助手：{safe}（安全过滤后换上的回复）" in text
    assert json.loads(save.read_text("utf-8"))["rounds"] == [{"user": "今天心情很差", "assistant": safe, "screened": True}]
    compare = text[text.index("[LoRA]"):]
    assert compare.startswith("[LoRA] 上面的回复被安全过滤") and f"{len(safe)} 字" not in compare
    assert "[基础模型]：基础模型的回答" in compare


@pytest.mark.slow
def test_the_terminal_chat_edits_lines_with_the_arrow_keys():
    """readline: the left arrow moves the cursor instead of putting ^[[D into the message."""
    pexpect = pytest.importorskip("pexpect")
    pytest.importorskip("readline")
    script = ("from psydt_lora.inference.chat import Chat\n"
              "Chat(None, None, None, system=None, history_turns=6, context_limit=None).loop()\n")
    child = pexpect.spawn(sys.executable, ["-c", script], env={**os.environ, "PYTHONPATH": str(ROOT / "LLM_fine_turning")},
                          encoding="utf-8", timeout=60)
    child.expect("你：")
    child.send("/system ab\x1b[Dc\r")  # type "ab", left arrow, "c"
    child.expect("已设置系统提示词")
    child.expect("你：")
    child.send("/system\r")
    child.expect(r"当前系统提示词\] (\S+)")
    shown = child.match.group(1)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert shown == "acb" and child.exitstatus == 0


@pytest.mark.parametrize("text", ["<think>\n想一想\n</think>\n\n你好，我在。", "你好，我在。"])
def test_think_blocks_are_hidden_from_the_stream_whatever_the_split(text):
    for cut in range(len(text) + 1):
        for cut2 in range(cut, len(text) + 1, 3):
            f = ThinkFilter()
            shown = f.feed(text[:cut]) + f.feed(text[cut:cut2]) + f.feed(text[cut2:]) + f.flush()
            assert shown == "你好，我在。", (cut, cut2)
    assert strip_think(text) == "你好，我在。"
    assert strip_think("<think>还没想完") == "" and strip_think("想法</think>回答") == "回答"


@pytest.mark.slow
def test_piped_stdin_session(tiny_model_dir, memorised_adapter):
    res = cli(["chat", "--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
               "--max_new_tokens", "40"], input=f"{D0[1]['content']}\n/history\n", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert D0[2]["content"] in res.stdout and "不能替代专业心理咨询" in res.stdout and "12356" in res.stdout
    import torch

    assert f"设备：{'cuda' if torch.cuda.is_available() else 'cpu'}" in res.stdout and str(memorised_adapter) in res.stdout
    assert res.stdout.rstrip().endswith("[再见]")  # Ctrl-D / end of input exits cleanly


@pytest.mark.slow
def test_pseudo_terminal_session(tiny_model_dir, memorised_adapter):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, [str(SCRIPT), "--model_path", str(tiny_model_dir), "--adapter_path",
                                           str(memorised_adapter), "--no-do_sample", "--max_new_tokens", "40"],
                          env={**os.environ, "PYTHONPATH": ""}, encoding="utf-8", timeout=120)
    child.expect("你：")
    child.sendline(D0[1]["content"])
    child.expect(D0[2]["content"])
    child.expect("你：")
    child.sendintr()  # Ctrl-C at the prompt does not kill the chat
    child.expect("输入 /exit 退出")
    child.sendline("/reset")
    child.expect("已清空")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
def test_keys_typed_while_a_reply_streams_are_neither_echoed_nor_sent(tiny_model_dir):
    pexpect = pytest.importorskip("pexpect")
    # the random base model writes until --max_new_tokens: a reply long enough to type into
    child = pexpect.spawn(sys.executable, [str(SCRIPT), "--model_path", str(tiny_model_dir), "--no_adapter",
                                           "--no-do_sample", "--max_new_tokens", "600", "--safety", "off"],
                          env={**os.environ, "PYTHONPATH": ""}, encoding="utf-8", timeout=120)
    child.expect("你：")
    child.sendline("你好")
    child.expect("助手：")
    child.send("typed ahead\r")
    child.expect("处被截断")
    streamed = child.before
    child.expect("生成回复时输入的内容已丢弃")
    child.expect("你：")
    child.sendline("/history")
    child.expect_exact("\r\n你：")  # the next prompt (history lines read "[1] 你：...")
    history = child.before
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert "typed ahead" not in streamed  # not echoed into the reply
    assert "[1] 你：你好" in history and "[2]" not in history and "typed ahead" not in history  # nor sent


def run_test_mode(tiny_model_dir, adapter, test_file, out, *extra, command=("--mode", "test")):
    argv = [*command, "--model_path", str(tiny_model_dir), "--test_file", str(test_file),
            "--test_output_file", str(out), "--no-do_sample", "--max_new_tokens", "40", *extra]
    if adapter is None:
        argv.append("--no_adapter")
    else:
        argv += ["--adapter_path", str(adapter)]
    assert inference_psydt_lora.main(argv) == 0
    return json.loads(out.read_text("utf-8"))


def test_test_mode_reproduces_memorised_replies_batched_equal_sequential(tiny_model_dir, memorised_adapter, data_files, tmp_path):
    _, test = data_files
    batched = run_test_mode(tiny_model_dir, memorised_adapter, test, tmp_path / "b.json", "--batch_size", "4")
    one = run_test_mode(tiny_model_dir, memorised_adapter, test, tmp_path / "s.json", "--batch_size", "1")
    merged = run_test_mode(tiny_model_dir, memorised_adapter, test, tmp_path / "m.json", "--batch_size", "3", "--merge_lora",
                           command=("test",))  # the subcommand, the same program
    for r in batched["results"]:
        assert r["response"] == r["reference"]
        assert set(r) >= {"id", "normalizedTag", "index", "history_turns", "response", "reference"}
    key = lambda rep: [(r["index"], r["response"]) for r in rep["results"]]  # noqa: E731
    assert key(batched) == key(one) == key(merged)
    meta = batched["meta"]
    assert meta["items"] == 4 and meta["generation"]["do_sample"] is False and meta["tokens_per_second"] > 0
    assert [r["history_turns"] for r in batched["results"]] == [0, 1, 0, 1]
    assert not list(tmp_path.glob("*.partial.jsonl"))


def test_save_merged_loads_with_plain_transformers_and_says_the_same(tiny_model_dir, memorised_adapter, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from psydt_lora.inference.generation import generate_batch
    from psydt_lora.prompt import prompt_ids

    merged = tmp_path / "merged"
    assert inference_psydt_lora.main(["export", "--model_path", str(tiny_model_dir), "--adapter_path",
                                      str(memorised_adapter), "--save_merged", str(merged)]) == 0
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(merged))
    assert tok.chat_template
    texts, _ = generate_batch(model, tok, [prompt_ids(tok, D0[:2])], GREEDY)
    assert texts == [D0[2]["content"]]


def test_test_mode_on_the_shaped_test_file_spreads_items_over_dialogues(tiny_model_dir, tmp_path):
    from psydt_lora.data.dialogues import group_prefix_items, read_dialogues

    test = require(SHAPED_TEST)
    rep = run_test_mode(tiny_model_dir, None, test, tmp_path / "r.json", "--max_test_items", "5", "--max_new_tokens", "3",
                        "--batch_size", "5")
    assert len(rep["results"]) == 5 and len({r["id"] for r in rep["results"]}) == 5
    items = json.loads(test.read_text("utf-8"))
    for r in rep["results"]:
        assert r["reference"] == items[r["index"]]["messages"][-1]["content"]
    # history_turns, not from the implementation's own count: an item's place among its dialogue's items
    place = {i: k for group in group_prefix_items(read_dialogues(test)[0]) for k, i in enumerate(group)}
    assert [r["history_turns"] for r in rep["results"]] == [place[r["index"]] for r in rep["results"]]
    assert any(r["history_turns"] > 0 for r in rep["results"]) and any(r["history_turns"] == 0 for r in rep["results"])


def test_questions_are_independent_conversations(tiny_model_dir, memorised_adapter, tmp_path):
    q = tmp_path / "q.txt"
    q.write_text(f"{D0[1]['content']}\n\n{DIALOGUES[1]['messages'][1]['content']}\n", "utf-8")
    rep = run_test_mode(tiny_model_dir, memorised_adapter, "unused", tmp_path / "q.json", "--questions_file", str(q))
    assert [r["response"] for r in rep["results"]] == [D0[2]["content"], DIALOGUES[1]["messages"][2]["content"]]
    assert all(r["history_turns"] == 0 and r["reference"] is None for r in rep["results"])


def test_interrupted_test_run_resumes_and_writes_every_item_once(loaded, data_files, tmp_path):
    from psydt_lora.evaluation.batch_run import BatchRun, run_test
    from psydt_lora.data.dialogues import read_dialogues

    model, tok, _, _ = loaded
    _, test = data_files
    items, _ = read_dialogues(test)
    out = tmp_path / "r.json"
    meta = {"model": "m", "adapter": "a", "seed": 1}

    def crash(n_done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_test(model, tok, items, GREEDY, BatchRun(out, 1, 4096, meta, progress=False, after_batch=crash))
    assert not out.exists()  # no final file until complete
    assert len((tmp_path / "r.json.partial.jsonl").read_text("utf-8").splitlines()) == 2  # header + one item
    rep = run_test(model, tok, items, GREEDY, BatchRun(out, 1, 4096, meta, progress=False))
    assert rep["meta"]["generated_this_run"] == 3
    assert sorted(r["index"] for r in rep["results"]) == [0, 1, 2, 3]
    assert all(r["response"] == r["reference"] for r in rep["results"])


def test_adapter_for_another_base_model_is_refused(memorised_adapter, tmp_path):
    other = build_tiny_model(tmp_path / "other", layers=3)
    with pytest.raises(PsyDTError, match=r"另一个基础模型.*num_hidden_layers: 训练时 2 / 现在 3"):
        load_for_inference(other, memorised_adapter, device="cpu")


COMMAND_FLAGS = {  # a flag of its own that each program has, and one it must not have
    "chat": ("--history_turns", "--backend"), "test": ("--test_output_file", "--backend"),
    "serve": ("--backend", "--test_output_file"), "export": ("--gguf_types", "--safety_resources"),
    "safety-eval": ("--safety_model", "--max_new_tokens")}


@pytest.mark.parametrize("command", list(COMMAND_FLAGS))
def test_each_subcommand_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        inference_psydt_lora.main([command, "--help"])
    said = capsys.readouterr().out
    own, foreign = COMMAND_FLAGS[command]
    assert done.value.code == 0 and f" {command} [选项]" in said.splitlines()[0]
    assert own in said and foreign not in said, command


def test_help_loads_no_heavy_library():
    """--help answers without torch, transformers or the server's libraries (they load when a program runs)."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'transformers', 'peft', 'datasets', 'fastapi', 'uvicorn', 'openai', 'matplotlib'})))\n"
            "sys.argv = ['inference_psydt_lora.py', *sys.argv[1:]]\n"
            "from psydt_lora.infer_cli import cli\nsys.exit(cli())\n")
    for argv in (["--help"], ["serve", "--help"], ["test", "--help"]):
        res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "用法：" in res.stdout and "LOADED []" in res.stdout, (argv, res.stdout[-300:])


FLAT_FORMS = [  # the tutorial's flat invocations and the subcommand each one is
    ([], ["chat"]),
    (["--mode", "interactive", "--history_turns", "2", "--safety", "off"], ["chat", "--history_turns", "2", "--safety", "off"]),
    (["--mode", "test", "--max_test_items", "5", "--no-do_sample", "--questions_file", "q.txt"],
     ["test", "--max_test_items", "5", "--no-do_sample", "--questions_file", "q.txt"]),
    (["--mode", "serve", "--port", "0", "--backend", "openai", "--backend_url", "http://127.0.0.1:1/v1"],
     ["serve", "--port", "0", "--backend", "openai", "--backend_url", "http://127.0.0.1:1/v1"]),
    (["--save_merged", "out", "--system_prompt", "你好"], ["export", "--save_merged", "out", "--system_prompt", "你好"]),
    (["--safety_eval", "cases.json", "--safety_model", "none"], ["safety-eval", "cases.json", "--safety_model", "none"]),
]


@pytest.mark.parametrize("flat, command", FLAT_FORMS, ids=[c[0] + str(i) for i, (_, c) in enumerate(FLAT_FORMS)])
def test_the_flat_form_is_the_same_program_with_the_same_settings(flat, command):
    from psydt_lora.infer_cli import parse, settings_from_flags

    old, new = settings_from_flags(*parse(flat)), settings_from_flags(*parse(command))
    assert old == new and old.command == command[0]


@pytest.mark.parametrize("argv, said", [
    (["--save_merged", "out", "--mode", "test"], "--save_merged 不能和 --mode test 一起用"),
    (["--save_merged", "out", "--mode", "interactive"], "--save_merged 不能和 --mode interactive 一起用"),
    (["--safety_eval", "cases.json", "--mode", "serve"], "--safety_eval 不能和 --mode serve 一起用"),
    (["--save_merged", "out", "--safety_eval", "cases.json"], "--save_merged 和 --safety_eval 是两个单独的程序"),
])
def test_a_separate_program_beside_a_conflicting_mode_is_refused(argv, said, capsys):
    """--save_merged / --safety_eval used to override --mode silently; now the user is told, before anything loads."""
    from psydt_lora.errors import run_cli

    assert run_cli(inference_psydt_lora.main, argv) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def readme_commands():
    """Every inference command the README shows (code blocks and inline), as argv."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text("utf-8")
    found = re.findall(r"(?:python LLM_fine_turning/inference_psydt_lora\.py|psydt-chat)((?: [^`\n（，；&#]*)?)", text)
    return sorted({tuple(shlex.split(args)) for args in found if not args.rstrip().endswith("\\")})


def test_every_readme_command_parses_to_its_program():
    from psydt_lora.infer_cli import COMMANDS, parse

    commands = readme_commands()
    assert len(commands) >= 12 and {argv[0] for argv in commands if argv} >= {"chat", "test", "serve", "export"}
    for argv in commands:
        if "--help" in argv:
            continue
        program, _ = parse(list(argv))  # argparse exits 2 on an unknown flag: the README would be wrong
        assert program in COMMANDS, argv


def test_missing_paths_say_what_produces_them(tiny_model_dir, tmp_path):
    res = cli(["--model_path", str(tiny_model_dir), "--adapter_path", str(tmp_path / "none")], input="")
    assert res.returncode == 2 and "train_psydt_lora.py" in res.stderr and "--no_adapter" in res.stderr
    assert "Traceback" not in res.stderr
    res = cli(["--model_path", str(tmp_path / "nomodel"), "--no_adapter"], input="")
    assert res.returncode == 2 and "找不到基础模型" in res.stderr
    res = cli(["--model_path", str(tiny_model_dir), "--no_adapter", "--mode", "test", "--test_file", str(tmp_path / "x.json")])
    assert res.returncode == 2 and "x.json 不存在" in res.stderr
