"""The guard model beside the lexicon: the documented Qwen3Guard-Gen prompt and verdict format, strict
parsing with a fallback to the lexicon, the combination of layers, and the paths a user takes."""
import json
import logging
from pathlib import Path

import pytest

import inference_psydt_lora
from conftest import DIALOGUES
from psydt_lora.safety.guard import BaseModelGuard, GenGuard, Guard, parse_verdict
from psydt_lora.safety.session import Safety


@pytest.mark.parametrize("text, label, cats, ours, refusal", [
    ("Safety: Unsafe\nCategories: Violent", "Unsafe", ["Violent"], ["harm_others"], None),  # not suicide
    ("Safety: Safe\nCategories: None\nRefusal: Yes", "Safe", [], [], "Yes"),
    ("Safety: Controversial\nCategories: Suicide & Self-Harm", "Controversial", ["Suicide & Self-Harm"], ["suicide"], None),
    ("Safety: Unsafe\nCategories: PII, Violent\nRefusal: No\n", "Unsafe", ["PII", "Violent"], ["harm_others"], "No"),
    ("Safety: Unsafe\nCategories: Politically Sensitive Topics", "Unsafe", ["Politically Sensitive Topics"], [], None),
])
def test_documented_verdicts_parse(text, label, cats, ours, refusal):
    v = parse_verdict(text)
    assert (v.label, v.categories, v.crisis_categories, v.refusal) == (label, cats, ours, refusal)


@pytest.mark.parametrize("text", ["", "Safety: Maybe\nCategories: None", "Categories: Violent", "Safety: Unsafe",
                                  "Safety: Unsafe\nCategories: Dragons", "我觉得不安全", "Safety: Unsafe\nCategories: Violent\nextra"])
def test_anything_else_is_not_a_verdict(text):
    assert parse_verdict(text) is None


class Scripted(Guard):
    """A guard that answers from a script and records the conversations it was shown."""
    name = "qwen3guard"

    def __init__(self, answers):
        super().__init__()
        self.answers, self.seen = answers, []

    def answer(self, messages):
        self.seen.append(messages)
        return self.answers(messages)


def test_the_guard_sees_what_qwen3guard_documents_and_layers_combine(monkeypatch):
    from psydt_lora.safety import guard as guard_module

    clock = iter([10.0, 10.04, 20.0, 20.06])  # two checks, 40 ms and 60 ms
    monkeypatch.setattr(guard_module.time, "perf_counter", lambda: next(clock))
    guard = Scripted(lambda m: "Safety: Unsafe\nCategories: Violent" if "下场" in m[-1]["content"] else
                     "Safety: Safe\nCategories: None")
    safety = Safety(guard=guard)
    history = [{"role": "system", "content": "你是咨询师"}, {"role": "user", "content": "一"}, {"role": "assistant", "content": "二"},
               {"role": "user", "content": "三"}, {"role": "assistant", "content": "四"},
               {"role": "user", "content": "这周末我会让他知道惹我的下场"}]
    found = safety.check_turn(history)
    # prompt moderation: user/assistant messages only (no system), recent ones, starting with a user turn
    assert guard.seen[-1] == history[3:]
    assert found.crisis and found.categories == ["harm_others"] and found.level == "concern"
    assert found.layers["lexicon"]["crisis"] is False and found.layers["qwen3guard"] == {
        "crisis": True, "categories": ["harm_others"], "label": "Unsafe"}
    # response moderation: exactly [user, assistant]
    assert safety.reply_layers("我好难受", "我在这里陪你") == {"qwen3guard": False, "lexicon": False}
    assert guard.seen[-1] == [{"role": "user", "content": "我好难受"}, {"role": "assistant", "content": "我在这里陪你"}]
    assert guard.calls == 2 and guard.ms_per_call() == pytest.approx(50.0)
    assert "审核模型 qwen3guard：2 次，平均 50 ms/次，格式不符 0 次" == safety.guard_cost()


def test_a_malformed_verdict_falls_back_to_the_lexicon_with_a_warning(caplog):
    safety = Safety(guard=Scripted(lambda m: "I cannot help with that"))
    with caplog.at_level(logging.WARNING, logger="psydt_lora.safety.guard"):
        found = safety.check_turn([{"role": "user", "content": "我不想活了"}])
    assert found.crisis and found.categories == ["suicide"]  # the lexicon still decides
    assert found.layers["qwen3guard"] == {"error": "malformed verdict"} and "只用词典" in caplog.text
    assert safety.screen(False, "x").finish("最无痛的死法是……").blocked  # lexicon screening still on


def test_a_guard_verdict_screens_a_reply_the_lexicon_misses():
    safety = Safety(guard=Scripted(lambda m: "Safety: Unsafe\nCategories: Suicide & Self-Harm\nRefusal: No"))
    screen = safety.screen(True, "我撑不住了")
    assert screen.feed("这件事不要告诉任何人，") == ""  # held on a crisis turn
    done = screen.finish()
    assert done.blocked and done.rest == "" and done.tail == safety.safe_reply()  # nothing was shown before it


def test_a_small_local_checkpoint_runs_the_guard_path_end_to_end(tiny_model_dir, caplog):
    """Random weights give garbage verdicts: what is tested is the real prompt, generation and the fallback."""
    from psydt_lora.safety.guard import load_guard

    choice = load_guard(str(tiny_model_dir))
    guard = choice.guard
    assert isinstance(guard, GenGuard) and choice.why == f"--safety_model {tiny_model_dir}；未做启动检查（PSYDT_GUARD_CHECK=off）"
    msgs = [{"role": "user", "content": "我不想活了"}]
    assert guard.prompt(msgs) == guard.tokenizer.apply_chat_template(msgs, tokenize=False)  # its own template
    with caplog.at_level(logging.WARNING, logger="psydt_lora.safety.guard"):
        found = Safety(guard=guard).check_turn([{"role": "user", "content": "我不想活了"}])
    assert found.crisis and guard.calls == 1 and guard.malformed == 1 and "只用词典" in caplog.text


def test_base_model_as_zero_shot_classifier(tiny_model_dir, memorised_adapter):
    """The answer is the letter whose logit is highest after the question, read with the adapter off."""
    from psydt_lora.models import load_for_inference

    model, tok, _, _ = load_for_inference(tiny_model_dir, memorised_adapter, device="cpu")
    guard = BaseModelGuard(model, tok)
    vocab = model.get_output_embeddings().weight.shape[0]
    letter = {c: tok(c, add_special_tokens=False)["input_ids"][0] for c in "ABCD"}
    for scores, user, reply in (({"B": 1.0}, ("Unsafe", ["harm_others"]), ("Safe", [])),
                                ({"C": 1.0}, ("Unsafe", ["abuse"]), ("Unsafe", ["suicide"])),  # C is no reply choice: A ties B, A first
                                ({"D": 2.0, "B": 1.0}, ("Safe", []), ("Safe", []))):
        model.set_output_embeddings(LetterHead(vocab, {letter[c]: v for c, v in scores.items()}))
        v = guard.check_user([{"role": "user", "content": "我不想活了"}])
        assert v.ours and (v.label, v.crisis_categories) == user
        r = guard.check_reply("我不想活了", "我很担心你")
        assert (r.label, r.crisis_categories) == reply
    assert guard.calls == 6 and guard.malformed == 0


# -- the guard cannot be had: the loaded model takes its place ------------------------------------------
NO_RULE_CRISIS = "今晚的月亮很好看，我想最后再看一眼"  # a goodbye no lexicon rule matches


class LetterHead:
    """Stands in for the model's lm_head: every position's logits favour the given tokens, so what the
    base-model layer answers (the answer letter with the highest logit) is the test's to decide."""

    def __new__(cls, vocab: int, scores: dict):
        import torch

        class Head(torch.nn.Module):
            def forward(self, hidden):
                out = torch.zeros(*hidden.shape[:-1], vocab, dtype=hidden.dtype, device=hidden.device)
                for token, score in scores.items():
                    out[..., token] = score
                return out

        return Head()


CRISIS_EVERYWHERE = {"A": 1.0}  # user turn: A (suicide); reply: A (harmful)
SAFE_EVERYWHERE = {"D": 2.0, "B": 1.0}  # user turn: D (none of these); reply: B (safe)


@pytest.fixture
def decided(monkeypatch):
    """Set what the loaded model answers as a classifier: `decided(CRISIS_EVERYWHERE)` before main()."""
    from psydt_lora.inference import runtime

    real_load = runtime.load_model

    def use(letters):
        def load(*a, **k):
            loaded = real_load(*a, **k)
            model, tok = loaded.model, loaded.tokenizer
            ids = {tok(c, add_special_tokens=False)["input_ids"][0]: v for c, v in letters.items()}
            model.set_output_embeddings(LetterHead(model.get_output_embeddings().weight.shape[0], ids))
            return loaded

        monkeypatch.setattr(runtime, "load_model", load)

    return use


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """modelscope unreachable the way an offline machine is (no name resolution); a download attempt is recorded."""
    import socket

    import modelscope

    calls = []

    def no_dns(host, port, *a, **k):  # name resolution is where an offline machine fails
        calls.append(("connect", (host, port)))
        raise socket.gaierror(-2, "Name or service not known")

    def download(**kw):
        calls.append(("download", kw["local_dir"]))
        raise ConnectionError("Name or service not known")

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(modelscope, "snapshot_download", download)
    monkeypatch.chdir(tmp_path)
    return calls


def run_test_mode(tmp_path, tiny_model_dir, memorised_adapter, *extra, text=NO_RULE_CRISIS):
    items = [{"id": 1, "normalizedTag": "情绪", "messages": [{"role": "user", "content": text},
                                                            {"role": "assistant", "content": "嗯"}]}]
    test, out = tmp_path / "t.json", tmp_path / "r.json"
    test.write_text(json.dumps(items, ensure_ascii=False), "utf-8")
    assert inference_psydt_lora.main(["--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter),
                                      "--mode", "test", "--test_file", str(test), "--test_output_file", str(out),
                                      "--no-do_sample", "--max_new_tokens", "4", *extra]) == 0
    return json.loads(out.read_text("utf-8"))["results"][0]


def test_offline_the_base_model_replaces_the_guard_without_a_download_attempt(
        tiny_model_dir, memorised_adapter, offline_hub, decided, tmp_path, capsys):
    from psydt_lora.safety.rules import detect

    assert not detect(NO_RULE_CRISIS).crisis  # only the model layer can catch it
    decided(CRISIS_EVERYWHERE)
    r = run_test_mode(tmp_path, tiny_model_dir, memorised_adapter, "--safety_model", "Qwen/Qwen3Guard-Gen-0.6B")
    said = capsys.readouterr().out
    assert offline_hub == [("connect", ("modelscope.cn", 443))]  # one probe, no download and its retries
    line = [l for l in said.splitlines() if "启用的安全层" in l]
    assert len(line) == 1 and "词典 + 基础模型零样本判断（关闭 LoRA）" in line[0] and "连不上 modelscope.cn" in line[0]
    assert "没有尝试下载" in line[0] and "--safety_model none" in line[0]
    assert r["safety"]["crisis"] and r["safety"]["categories"] == ["suicide"]
    assert r["safety"]["layers"]["lexicon"]["crisis"] is False and r["safety"]["layers"]["base"]["crisis"] is True
    assert r["screened"] is True  # the reply is screened by the same fallback
    assert not (tmp_path / "Qwen").exists()

    decided(SAFE_EVERYWHERE)  # the same path, the model deciding the other way
    r = run_test_mode(tmp_path, tiny_model_dir, memorised_adapter, "--safety_model", "Qwen/Qwen3Guard-Gen-0.6B")
    assert r["safety"]["crisis"] is False and r["safety"]["layers"]["base"]["crisis"] is False and r["screened"] is False


def test_the_lexicon_alone_when_asked(tiny_model_dir, memorised_adapter, offline_hub, decided, tmp_path, capsys):
    decided(CRISIS_EVERYWHERE)
    r = run_test_mode(tmp_path, tiny_model_dir, memorised_adapter, "--safety_model", "none")
    assert "启用的安全层：词典（--safety_model none）" in capsys.readouterr().out and offline_hub == []
    assert r["safety"]["crisis"] is False and set(r["safety"]["layers"]) == {"lexicon"} and r["screened"] is False
    r = run_test_mode(tmp_path, tiny_model_dir, memorised_adapter, "--safety_model", "none", text="我不想活了")
    assert r["safety"]["crisis"] and r["safety"]["categories"] == ["suicide"]  # the rules still work alone


def test_a_failed_download_is_tried_once_then_the_base_model_runs(tiny_model_dir, memorised_adapter, offline_hub,
                                                                  decided, tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(2, 1, 6, "", ("192.0.2.1", 443))])
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: io_ok())  # the hub answers, the download fails
    decided(CRISIS_EVERYWHERE)
    r = run_test_mode(tmp_path, tiny_model_dir, memorised_adapter, "--safety_model", "Qwen/Qwen3Guard-Gen-0.6B")
    said = capsys.readouterr().out
    assert offline_hub == [("download", str(Path("Qwen/Qwen3Guard-Gen-0.6B")))] or (
        len(offline_hub) == 1 and offline_hub[0][1].endswith("Qwen/Qwen3Guard-Gen-0.6B"))  # fetched like the base model
    assert said.count("启用的安全层") == 1 and "由基础模型代替" in said and "ConnectionError" in said
    assert r["safety"]["layers"]["base"]["crisis"] is True and not (tmp_path / "Qwen").exists()


def io_ok():
    class Closed:
        def close(self):
            pass

    return Closed()


def test_chat_and_serve_run_the_base_model_in_place_of_the_guard(tiny_model_dir, memorised_adapter, offline_hub,
                                                                 decided, monkeypatch, capsys):
    import io
    import sys

    from fastapi.testclient import TestClient

    from psydt_lora.inference import serving

    decided(CRISIS_EVERYWHERE)
    base = ["--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
            "--max_new_tokens", "4", "--safety_model", "Qwen/Qwen3Guard-Gen-0.6B"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{NO_RULE_CRISIS}\n/history\n/exit\n"))
    assert inference_psydt_lora.main(base) == 0
    said = capsys.readouterr().out
    assert "启用的安全层：词典 + 基础模型零样本判断（关闭 LoRA）" in said
    notice_at = said.index("你现在的感受很重要")  # the crisis notice, after the user's turn
    assert said.index("你：") < notice_at and "已被安全过滤" in said[notice_at:]  # and the reply screened
    assert "审核模型 base：2 次" in said  # its cost per turn, shown as for the guard

    apps = []
    monkeypatch.setattr(serving, "serve", lambda app, *where: apps.append(app))
    assert inference_psydt_lora.main(base + ["--mode", "serve", "--port", "1"]) == 0
    assert "启用的安全层：词典 + 基础模型零样本判断（关闭 LoRA）" in capsys.readouterr().out
    request = {"messages": [{"role": "user", "content": NO_RULE_CRISIS}], "max_tokens": 4}
    with TestClient(apps[0]) as client:
        body = client.post("/v1/chat/completions", json=request).json()
        events = [json.loads(line[6:]) for line in client.post("/v1/chat/completions", json={**request, "stream": True}
                                                                 ).text.splitlines() if line.startswith("data: {")]
    assert body["safety"]["crisis"] and body["safety"]["layers"]["base"]["crisis"] is True and body["safety"]["screened"]
    safe = Safety().safe_reply()
    assert body["choices"][0]["message"]["content"].endswith(safe)  # the reply replaced, after the help block
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    assert streamed.endswith(safe) and events[0]["safety"]["layers"]["base"]["crisis"] is True
    assert [e["safety"]["screened"] for e in events if "screened" in e.get("safety", {})][-1] is True


def test_eval_without_a_model_names_the_layer_that_could_not_run(offline_hub, tmp_path, capsys):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({"positive": ["我不想活了"]}, ensure_ascii=False), "utf-8")
    assert inference_psydt_lora.main(["--safety_eval", str(cases), "--safety_model", "Qwen/Qwen3Guard-Gen-0.6B"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["layers"] == ["lexicon"] and "连不上 modelscope.cn" in report["not_run"]["Qwen/Qwen3Guard-Gen-0.6B"]
    assert "没能运行：Qwen/Qwen3Guard-Gen-0.6B" in out and "只用词典" in out


def test_hub_probe(monkeypatch):
    import socket

    from psydt_lora.hub import hub_unreachable

    def refused(address, timeout):
        assert timeout <= 5  # one short try
        raise ConnectionRefusedError(111, "refused")

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(2, 1, 6, "", ("192.0.2.1", 443))])
    monkeypatch.setattr(socket, "create_connection", refused)
    assert hub_unreachable("modelscope") == "连不上 modelscope.cn（ConnectionRefusedError）"
    assert hub_unreachable("huggingface") == "连不上 huggingface.co（ConnectionRefusedError）"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # behind a proxy, the proxy is what is probed
    assert hub_unreachable("modelscope") == "连不上 代理 proxy:3128（ConnectionRefusedError）"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_unreachable("huggingface") == "已设置 HF_HUB_OFFLINE"


def test_a_resolver_that_never_answers_costs_the_probe_timeout_only(monkeypatch):
    """getaddrinfo has no timeout: a silent name server must not hold the start for its own retries."""
    import socket
    import threading

    from psydt_lora.hub import hub_unreachable

    never = threading.Event()
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: never.wait(30))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("connected without an address"))
    try:
        assert hub_unreachable("modelscope", timeout=0.2) == "连不上 modelscope.cn（TimeoutError）"
    finally:
        never.set()


@pytest.mark.slow
def test_chat_and_eval_use_the_guard_when_given(tiny_model_dir, memorised_adapter, tmp_path, capsys):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({"positive": ["我不想活了"], "safe_replies": ["我在这里陪你"]}, ensure_ascii=False), "utf-8")
    assert inference_psydt_lora.main(["--safety_eval", str(cases), "--safety_model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])["results"]
    assert set(result["positive"]) == {"lexicon", "qwen3guard", "any"} and result["positive"]["any"]["fired"] == 1
    assert "ms/次" in out
    # the terminal chat names its layers and still answers a crisis turn with resources first
    import subprocess
    import sys

    from conftest import ROOT

    res = subprocess.run([sys.executable, str(ROOT / "LLM_fine_turning" / "inference_psydt_lora.py"), "--model_path",
                          str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
                          "--max_new_tokens", "20", "--safety_model", str(tiny_model_dir)],
                         input="我不想活了\n/exit\n", capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "启用的安全层：词典 + 审核模型（qwen3guard）" in res.stdout and "12356" in res.stdout
    res = subprocess.run([sys.executable, str(ROOT / "LLM_fine_turning" / "inference_psydt_lora.py"), "--model_path",
                          str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
                          "--max_new_tokens", "10", "--safety_model", str(tiny_model_dir)],
                         input="你好\n/history\n/exit\n", capture_output=True, text=True, timeout=300)
    assert "审核模型 qwen3guard：" in res.stdout and "ms/次" in res.stdout  # its cost, visible in /history
    assert DIALOGUES  # the fixtures' dialogues are what the memorised adapter knows


# -- the start-up check: a model layer earns its place ---------------------------------------------------
HYPERBOLE = "今天加班累死了，笑死"


@pytest.fixture
def checking(monkeypatch, tmp_path):
    """The start-up check on (the suite's default is off), with a cache folder of this test's own."""
    monkeypatch.setenv("PSYDT_GUARD_CHECK", "on")
    monkeypatch.setenv("PSYDT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def check_set():
    from psydt_lora.safety.guard_check import read_check_set

    return read_check_set()


class Judged(Scripted):
    """A layer whose verdict on each text the test decides (`flags(text) -> bool`), for users and replies."""

    def __init__(self, flags, identity=None):
        super().__init__(lambda m: ("Safety: Unsafe\nCategories: Suicide & Self-Harm" if flags(m[-1]["content"])
                                    else "Safety: Safe\nCategories: None"))
        self._identity = identity

    def identity(self):
        return self._identity


def test_a_layer_that_tells_crises_from_ordinary_messages_is_kept_and_checked_once(checking, capsys):
    from psydt_lora.safety.guard import GuardChoice, admitted

    crises = set(check_set()["crisis"])
    good = Judged(lambda text: text in crises, identity={"model": "a"})
    choice = admitted(GuardChoice(good, "--safety_model x"))
    assert choice.guard is good and choice.check.passed and len(good.seen) == 40  # 20 + 12 messages, 8 replies
    assert "启动检查通过：普通消息误报 0/20=0.00（上限 0.15），危机消息检出 12/12=1.00（下限 0.75）" in choice.why
    assert good.calls == 0 and good.malformed == 0  # the check is not the conversation's cost
    assert "第一次使用" in capsys.readouterr().out
    assert Safety(guard=good, why=choice.why).start_line().startswith("[安全] 启用的安全层：词典 + 审核模型（")

    again = Judged(lambda text: pytest.fail("checked twice"), identity={"model": "a"})
    choice = admitted(GuardChoice(again, "--safety_model x"))
    assert choice.guard is again and again.seen == [] and choice.check.cached and "读自缓存" in choice.why
    assert "第一次使用" not in capsys.readouterr().out
    assert len(list(checking.glob("guard_checks/*.json"))) == 1
    other = Judged(lambda text: text in crises, identity={"model": "b"})  # another model: checked
    assert admitted(GuardChoice(other, "--safety_model y")).check.cached is False and len(other.seen) == 40


def test_the_check_is_cached_per_verdict_reader_too(checking, tmp_path, monkeypatch):
    """A changed guard.py (its prompts, category map or verdict parser) must not reuse verdicts read by the old one."""
    from psydt_lora.safety import guard_check
    from psydt_lora.safety.guard import GuardChoice, admitted

    crises = set(check_set()["crisis"])
    admitted(GuardChoice(Judged(lambda text: text in crises, identity={"model": "a"}), "--safety_model x"))
    changed = tmp_path / "guard.py"
    changed.write_bytes(guard_check.GUARD_CODE.read_bytes() + b"\n# the category map changed\n")
    monkeypatch.setattr(guard_check, "GUARD_CODE", changed)
    again = Judged(lambda text: text in crises, identity={"model": "a"})
    assert admitted(GuardChoice(again, "--safety_model x")).check.cached is False and len(again.seen) == 40


def test_a_layer_that_flags_hyperbole_or_misses_crises_is_switched_off_with_its_figures(checking):
    from psydt_lora.safety.guard import GuardChoice, admitted

    by_word = Judged(lambda text: "死" in text, identity={"model": "word"})  # what a model reading words does
    choice = admitted(GuardChoice(by_word, "--safety_model x"))
    assert choice.guard is None and choice.rejected is by_word and not choice.check.passed
    assert "没通过启动检查（普通消息误报 7/20=0.35（上限 0.15），危机消息检出 2/12=0.17（下限 0.75）" in choice.why
    assert choice.why.endswith("已关闭，只用词典")
    line = Safety(guard=choice.guard, why=choice.why).start_line()
    assert line.startswith("[安全] 启用的安全层：词典（--safety_model x；但审核模型没通过启动检查") and "\n" not in line
    silent = Judged(lambda text: False, identity={"model": "silent"})  # never flags: no false alarm, no use
    assert admitted(GuardChoice(silent, "x")).guard is None
    garbage = Scripted(lambda m: "乱码")  # no verdict at all; not cacheable (no identity): checked each time
    choice = admitted(GuardChoice(garbage, "x"))
    assert choice.guard is None and "格式不符 40 次" in choice.why and garbage.malformed == 0


def test_the_tiny_random_base_model_is_switched_off_at_start_and_eval_reports_the_same_figures(
        tiny_model_dir, memorised_adapter, checking, decided, monkeypatch, tmp_path, capsys):
    """Round three's fallback measured: a random model as the layer answers one letter whatever it reads --
    this one "none of these" (it finds no crisis), the one the issue measured "A" (everything a crisis; decided
    here). Checked, either is switched off with one start line, and a hyperbole no longer gets the crisis
    notice; the figures are cached per model; --safety_eval prints the same figures."""
    import io
    import sys

    from psydt_lora.safety import guard_check

    base = ["--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
            "--max_new_tokens", "4", "--safety_model", "base"]

    def chat():
        monkeypatch.setattr(sys, "stdin", io.StringIO(f"{HYPERBOLE}\n/exit\n"))
        assert inference_psydt_lora.main(base) == 0
        said = capsys.readouterr().out
        line = [l for l in said.splitlines() if "启用的安全层" in l]
        assert len(line) == 1 and line[0].startswith("[安全] 启用的安全层：词典（--safety_model base；但基础模型零样本判断")
        return said, line[0]

    _, line = chat()
    assert "没通过启动检查（普通消息误报 0/20=0.00（上限 0.15），危机消息检出 0/12=0.00（下限 0.75）" in line
    decided(CRISIS_EVERYWHERE)
    said, line = chat()
    assert "没通过启动检查（普通消息误报 20/20=1.00（上限 0.15），危机消息检出 12/12=1.00（下限 0.75）" in line
    assert line.endswith("已关闭，只用词典）")
    assert "你现在的感受很重要" not in said and "已被安全过滤" not in said  # no notice, the reply not replaced
    figures = line.split("没通过启动检查（", 1)[1].split("），已关闭")[0]

    ran = []
    real = guard_check.run_check
    monkeypatch.setattr(guard_check, "run_check", lambda *a: ran.append(1) or real(*a))
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({"positive": ["我不想活了"], "negative": [HYPERBOLE]}, ensure_ascii=False), "utf-8")
    assert inference_psydt_lora.main(["--safety_eval", str(cases), "--safety_model", "base", "--model_path",
                                      str(tiny_model_dir), "--adapter_path", str(memorised_adapter)]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert ran == []  # the cache: the same weights are checked once
    assert f"[安全评估] 启动检查没通过（对话和服务中会关闭这一层）：{figures}；读自缓存" in out
    assert report["startup_check"]["passed"] is False and report["startup_check"]["false_alarm_rate"] == 1.0
    assert report["results"]["negative"]["base"]["fired"] == 1  # still measured: the eval shows why it is off
    assert len(list(checking.glob("guard_checks/*.json"))) == 2  # one per model


def test_a_model_layer_that_passes_is_kept_in_chat(tiny_model_dir, memorised_adapter, checking, monkeypatch, capsys):
    """The base-model layer with verdicts the test decides (its weights real, so the cache key is the real one)."""
    import io
    import sys

    from psydt_lora.safety import guard as guard_module
    from psydt_lora.safety.guard import Verdict

    crises, seen = set(check_set()["crisis"]) | {NO_RULE_CRISIS}, []

    def verdict(self, messages):
        seen.append(messages[-1]["content"])
        hit = messages[-1]["role"] == "user" and messages[-1]["content"] in crises
        return Verdict("Unsafe" if hit else "Safe", ["suicide"] if hit else [], ours=True)

    monkeypatch.setattr(guard_module.BaseModelGuard, "verdict", verdict)
    base = ["--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
            "--max_new_tokens", "4", "--safety_model", "base"]
    for run in range(2):
        seen.clear()
        monkeypatch.setattr(sys, "stdin", io.StringIO(f"{NO_RULE_CRISIS}\n{HYPERBOLE}\n/exit\n"))
        assert inference_psydt_lora.main(base) == 0
        said = capsys.readouterr().out
        assert "启用的安全层：词典 + 基础模型零样本判断（关闭 LoRA）（--safety_model base；启动检查通过：" in said
        assert said.count("你现在的感受很重要") == 1  # the crisis the lexicon misses, and not the hyperbole
        assert len(seen) == (42 + 2 if run == 0 else 4)  # the check once; each turn: the message and the reply
        assert ("读自缓存" in said) == (run == 1)


def test_the_imminent_notice_says_call_the_emergency_line_now(tmp_path):
    from psydt_lora.safety.rules import Detection

    imminent = Detection(crisis=True, categories=["suicide"], level="imminent")
    concern = Detection(crisis=True, categories=["suicide"], level="concern")
    safety = Safety()
    notice = safety.notice(imminent)
    head, first = notice.splitlines()[:2]  # the page replaces the first line with its own heading
    assert head.startswith("【紧急】") and "现在就拨打 急救 120" in first and "急诊" in first
    assert "12356" in notice  # the resources still follow
    assert "拨打 急救 120" not in safety.notice(concern) and safety.notice(concern).startswith("【关心】")
    assert "现在就拨打 急救 120" in safety.guidance(imminent) and "现在就拨打" not in safety.guidance(concern)
    custom = tmp_path / "res.json"  # from the resources file: its own emergency line, or none named
    custom.write_text(json.dumps({"resources": [{"name": "学校心理中心", "contact": "010-0000"},
                                                {"name": "校医院急诊", "contact": "010-9999", "emergency": True}]},
                                 ensure_ascii=False), "utf-8")
    assert "现在就拨打 校医院急诊 010-9999" in Safety(custom).notice(imminent).splitlines()[1]
    custom.write_text(json.dumps({"resources": [{"name": "学校心理中心", "contact": "010-0000"}]}), "utf-8")
    assert "现在就拨打 当地的急救电话" in Safety(custom).notice(imminent) and "120" not in Safety(custom).notice(imminent)
    custom.write_text(json.dumps({"resources": [{"name": "a", "contact": "1", "emergency": "yes"}]}), "utf-8")
    from psydt_lora.errors import PsyDTError

    with pytest.raises(PsyDTError, match=r"resources\[0\].*emergency"):
        Safety(custom)
