"""End to end with this project's own server (`--mode serve`, tiny model) as the generator and as the judge:
generate on the test split and on the crisis set, judge on the rubric, pairwise, the crisis check. A tiny
random model cannot answer in the judge's format: every verdict must be counted as what it is, the report
still written, no traceback."""
import json

import pytest

from conftest import require  # noqa: F401  (conftest's fixtures)
from test_serving import Server

import judge_psydt_lora
from psydt_lora.judge.rubric import load_rubric

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_servers(tiny_model_dir, memorised_adapter):
    """LoRA and base, as the README says to generate with this project's server: the safety layer off, so
    the crisis check sees the models' own replies."""
    common = ("--model_path", str(tiny_model_dir), "--no-do_sample", "--max_new_tokens", "40", "--safety", "off")
    lora = Server(*common, "--adapter_path", str(memorised_adapter))
    base = Server(*common, "--no_adapter", "--served_model_name", "base")
    yield lora, base
    lora.stop()
    base.stop()


def test_the_whole_pipeline_on_our_own_server(own_servers, data_files, tmp_path, capsys):
    lora, base = own_servers
    _, test = data_files
    out = tmp_path / "judge"
    gen = ["--gen_url", f"{lora.url}/v1", "--gen_model", "psydt", "--gen_max_tokens", "24", "--temperature", "0",
           "--gen_base_url", f"{base.url}/v1", "--gen_base_model", "base", "--no_progress", "--out_dir", str(out)]
    judge = ["--judge_url", f"{lora.url}/v1", "--judge_model", "psydt", "--judge_max_tokens", "16",
             "--no_progress", "--out_dir", str(out)]
    assert judge_psydt_lora.main(["generate", "--eval_set", "psydt", "--test_file", str(test), *gen]) == 0
    assert judge_psydt_lora.main(["generate", "--eval_set", "crisis", "--max_test_items", "6", *gen]) == 0
    results = json.loads((out / "psydt.json").read_text("utf-8"))
    assert len(results["results"]) == 4
    assert all(isinstance(r["response"], str) and isinstance(r["base_response"], str) for r in results["results"])
    # the memorised adapter answers the test split's contexts with the training replies; the base model cannot
    assert sum(r["response"] == r["reference"] for r in results["results"]) >= 2
    assert not any(r["base_response"] == r["reference"] for r in results["results"])

    assert judge_psydt_lora.main(["rubric", "--results", str(out / "psydt.json"), *judge]) == 0
    assert judge_psydt_lora.main(["pairwise", "--a", str(out / "psydt.json"), *judge]) == 0
    assert judge_psydt_lora.main(["crisis", "--results", str(out / "crisis.json"), *judge]) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err

    rubric = load_rubric("cpsycoune")
    judged = json.loads((out / "rubric-cpsycoune.json").read_text("utf-8"))
    assert len(judged["items"]) == 8  # 4 items x (LoRA, base)
    for v in judged["items"]:  # each verdict counted as what its raw answer is
        assert v["status"] == rubric.parse(v["raw"], v["finish_reason"])[0]
    counts = {side: s["counts"] for side, s in judged["summary"].items()}
    bad = sum(c[k] for c in counts.values() for k in ("unparseable", "out_of_range", "refused", "failed"))
    assert bad + sum(c["ok"] for c in counts.values()) == 8 and bad > 0
    pair = json.loads((out / "pairwise-lora-vs-base.json").read_text("utf-8"))
    assert sum(pair["summary"]["counts"].values()) == 4
    crisis = json.loads((out / "crisis-check.json").read_text("utf-8"))
    for side in ("lora", "base"):
        assert crisis["screen"][side]["crisis"]["items"] + crisis["screen"][side]["ordinary"]["items"] == 6
    assert crisis["summary"]["lora"]["counts"]["ok"] + crisis["summary"]["base"]["counts"]["ok"] < sum(
        sum(s["counts"].values()) for s in crisis["summary"].values())  # a tiny model cannot answer in the format
    report = (out / "report.md").read_text("utf-8")
    assert f"| 无法解析 | {counts['lora']['unparseable']} | {counts['base']['unparseable']} |" in report
    assert "## 两两比较" in report and "## 危机回应检查" in report
