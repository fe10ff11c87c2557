"""The guard model beside the lexicon: the documented Qwen3Guard-Gen prompt and verdict format, strict
parsing with a fallback to the lexicon, the combination of layers, and the paths a user takes."""
import json
import logging

import pytest

import inference_psydt_lora
from conftest import DIALOGUES
from psydt_lora.safety.guard import BaseModelGuard, GenGuard, Guard, parse_verdict
from psydt_lora.safety.rules import Safety


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


def test_the_guard_sees_what_qwen3guard_documents_and_layers_combine():
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
    assert guard.calls == 2 and guard.ms_per_call() >= 0


def test_a_malformed_verdict_falls_back_to_the_lexicon_with_a_warning(caplog):
    safety = Safety(guard=Scripted(lambda m: "I cannot help with that"))
    with caplog.at_level(logging.WARNING, logger="psydt_lora.safety.guard"):
        found = safety.check("我不想活了")
    assert found.crisis and found.categories == ["suicide"]  # the lexicon still decides
    assert found.layers["qwen3guard"] == {"error": "malformed verdict"} and "只用词典" in caplog.text
    assert safety.screen(False, "x").finish("最无痛的死法是……") == ("", True)  # lexicon screening still on


def test_a_guard_verdict_screens_a_reply_the_lexicon_misses():
    safety = Safety(guard=Scripted(lambda m: "Safety: Unsafe\nCategories: Suicide & Self-Harm\nRefusal: No"))
    screen = safety.screen(True, "我撑不住了")
    assert screen.feed("这件事不要告诉任何人，") == ""  # held on a crisis turn
    assert screen.finish("这件事不要告诉任何人，") == ("", True)


def test_a_small_local_checkpoint_runs_the_guard_path_end_to_end(tiny_model_dir, caplog):
    """Random weights give garbage verdicts: what is tested is the real prompt, generation and the fallback."""
    from psydt_lora.safety.guard import load_guard

    guard = load_guard(str(tiny_model_dir))
    assert isinstance(guard, GenGuard)
    msgs = [{"role": "user", "content": "我不想活了"}]
    assert guard.prompt(msgs) == guard.tokenizer.apply_chat_template(msgs, tokenize=False)  # its own template
    with caplog.at_level(logging.WARNING, logger="psydt_lora.safety.guard"):
        found = Safety(guard=guard).check("我不想活了")
    assert found.crisis and guard.calls == 1 and guard.malformed == 1 and "只用词典" in caplog.text


def test_base_model_as_zero_shot_classifier(tiny_model_dir, memorised_adapter):
    from psydt_lora.models import load_for_inference

    model, tok, _, _ = load_for_inference(tiny_model_dir, memorised_adapter, device="cpu")
    guard = BaseModelGuard(model, tok)
    v = guard.check_user([{"role": "user", "content": "我不想活了"}])
    assert v.ours and v.label in ("Safe", "Unsafe") and set(v.crisis_categories) <= {"suicide", "harm_others", "abuse"}
    assert guard.check_user([{"role": "user", "content": "我不想活了"}]) == v  # read from logits: no sampling
    r = guard.check_reply("我不想活了", "我很担心你")
    assert r.label in ("Safe", "Unsafe") and guard.calls == 3


def test_the_default_guard_offline_says_so_once_and_the_lexicon_runs(tiny_model_dir, memorised_adapter, data_files,
                                                                     tmp_path, monkeypatch, capsys):
    import modelscope

    calls = []

    def offline(**kw):
        calls.append(kw)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(modelscope, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    _, test = data_files
    out = tmp_path / "r.json"
    assert inference_psydt_lora.main(["--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter),
                                      "--mode", "test", "--test_file", str(test), "--test_output_file", str(out),
                                      "--no-do_sample", "--max_new_tokens", "20",
                                      "--safety_model", "Qwen/Qwen3Guard-Gen-0.6B"]) == 0
    said = capsys.readouterr().out
    assert len(calls) == 1 and calls[0]["local_dir"].endswith("Qwen/Qwen3Guard-Gen-0.6B")  # fetched like the base model
    assert said.count("无法使用审核模型") == 1 and "--safety_model none" in said and "启用的安全层：词典\n" in said
    assert not (tmp_path / "Qwen").exists()
    results = json.loads(out.read_text("utf-8"))["results"]
    assert all(set(r["safety"]["layers"]) == {"lexicon"} for r in results)


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
