"""The preference loop end to end, offline, on the tiny model: SFT (the memorised adapter) -> this project's server
generates several sampled replies per item (and the base model, in a second results file) -> a scripted judge scores them ->
`psydt-judge pairs` -> `--stage dpo` from the SFT adapter -> the preference adapter is served and judged again.

The scripted judge scores a reply by the one thing a tiny model can get right: full marks when it is the real
counsellor's reply (the memorised adapter reproduces the training replies), nothing otherwise."""
import json

import pytest

import judge_server
from judge_server import JudgeServer
from test_serving import Server

import judge_psydt_lora
import train_psydt_lora
from psydt_lora.run_record import RunRecord

pytestmark = pytest.mark.slow

REPLY, REFERENCE, CRITERIA = "【咨询师的回复】\n", "【参考回复】", "\n\n【评分标准】"


def by_reference(text: str) -> str:
    """The rubric prompt (with --with_reference): [2, 3, 3, 1] when the reply is the reference, else zeros."""
    reply = text.split(REPLY, 1)[1].split("\n\n" + REFERENCE, 1)[0]
    reference = text.split(REFERENCE, 1)[1].split("\n", 1)[1].split(CRITERIA, 1)[0]
    return "[2, 3, 3, 1]" if reply.strip() == reference.strip() else "[0, 0, 0, 0]"


@pytest.fixture
def judge(monkeypatch):
    original = judge_server.decide
    monkeypatch.setattr(judge_server, "decide", lambda text: by_reference(text) if REFERENCE in text else original(text))
    server = JudgeServer()
    yield server
    server.stop()


def serve(model_dir, *args):
    return Server("--model_path", str(model_dir), "--max_new_tokens", "40", "--safety", "off", *args)


def test_sft_generate_judge_pairs_dpo_serve_and_judge_again(tiny_model_dir, memorised_adapter, data_files, judge,
                                                           tmp_path, capsys):
    _, test = data_files
    out = tmp_path / "judge"
    scripted = ["--judge_url", judge.url, "--judge_model", "scripted-judge", "--with_reference", "--no_progress"]
    lora, base = serve(tiny_model_dir, "--adapter_path", str(memorised_adapter)), \
        serve(tiny_model_dir, "--no_adapter", "--served_model_name", "base")
    try:
        gen = ["generate", "--eval_set", "psydt", "--test_file", str(test), "--out_dir", str(out), "--gen_max_tokens",
               "40", "--samples_per_item", "3", "--seed", "0", "--no_progress"]
        # the SFT adapter sampled near-greedily (it reproduces the training replies); the random base model sampled
        # hot, in its own results file (greedy, it answers only newlines: an empty reply is no side of a pair)
        assert judge_psydt_lora.main([*gen, "--gen_url", f"{lora.url}/v1", "--gen_model", "psydt", "--temperature", "0.01",
                                      "--output", str(out / "sft.json")]) == 0
        assert judge_psydt_lora.main([*gen, "--gen_url", f"{base.url}/v1", "--gen_model", "base", "--temperature", "1.5",
                                      "--output", str(out / "base.json")]) == 0
    finally:
        lora.stop()
        base.stop()
    sampled = json.loads((out / "sft.json").read_text("utf-8"))
    assert len(sampled["results"]) == 4 * 3 and {r["seed"] for r in sampled["results"]} == {0, 1, 2}
    assert judge_psydt_lora.main(["rubric", "--results", str(out / "sft.json"), "--results", str(out / "base.json"),
                                  "--out_dir", str(out), *scripted]) == 0
    assert judge_psydt_lora.main(["pairs", "--out_dir", str(out)]) == 0
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text("utf-8").splitlines()]
    references = {json.dumps(r["context"], ensure_ascii=False): r["reference"] for r in sampled["results"]}
    assert pairs, capsys.readouterr().out
    for p in pairs:  # the real reply chosen, a reply that is not it rejected
        assert p["chosen"][0]["content"] == references[json.dumps(p["prompt"], ensure_ascii=False)]
        assert p["rejected"][0]["content"] != p["chosen"][0]["content"] and p["origin"]["source"] == "rubric"

    dpo_out = tmp_path / "dpo"
    assert train_psydt_lora.main(["--stage", "dpo", "--model_local_dir", str(tiny_model_dir), "--train_file",
                                  str(out / "pairs.jsonl"), "--adapter_path", str(memorised_adapter), "--output_dir",
                                  str(dpo_out), "--report_to", "none", "--max_steps", "2", "--save_steps", "100",
                                  "--logging_steps", "1", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3",
                                  "--no-do_eval"]) == 0
    adapter = dpo_out / "lora_adapter"
    record = RunRecord.read(adapter)
    assert record.stage == "dpo" and record.preference["reference"] == "adapter"
    assert record.data["train"]["pairs"] == len(pairs)

    again = tmp_path / "again"
    served = serve(tiny_model_dir, "--adapter_path", str(adapter), "--no-do_sample")
    try:
        assert judge_psydt_lora.main(["generate", "--eval_set", "psydt", "--test_file", str(test), "--out_dir", str(again),
                                      "--gen_url", f"{served.url}/v1", "--gen_model", "psydt", "--gen_max_tokens", "40",
                                      "--temperature", "0", "--no_progress"]) == 0
    finally:
        served.stop()
    assert judge_psydt_lora.main(["rubric", "--results", str(again / "psydt.json"), "--out_dir", str(again), *scripted]) == 0
    judged = json.loads((again / "rubric-cpsycoune.json").read_text("utf-8"))
    assert judged["summary"]["psydt"]["counts"]["ok"] == 4  # every reply of the preference adapter judged
    assert "Traceback" not in "".join(capsys.readouterr())
