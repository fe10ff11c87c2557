"""End to end with this project's own server (`serve`, tiny model) as the generator and as the judge, the
two servers started from the README's own recipe (its command lines read out of README.md and run as
written, on free ports and the tiny model): generate on the test split and on the crisis set, judge on the
rubric, pairwise, the crisis check; the README's generate line as written; the judge at its default
concurrency (8) against a server that handles 4 at a time loses no item. A tiny random model cannot
answer in the judge's format: every verdict must be counted as what it is, the report still written, no
traceback."""
import argparse
import json
import re
import shlex

import pytest

from conftest import ROOT, require  # noqa: F401  (conftest's fixtures)
from test_serving import Server

import inference_psydt_lora
import judge_psydt_lora
from psydt_lora.judge.rubric import load_rubric

pytestmark = pytest.mark.slow
RECIPE = "# 本项目的服务当生成接口"  # the first line of the README's block


def readme_recipe() -> list[list[str]]:
    """The README's own-server block: each command line (continuations joined) split as a shell would."""
    text = (ROOT / "README.md").read_text("utf-8")
    block = text[text.index(RECIPE):].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def serve_parser():
    parser = inference_psydt_lora.build_command_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]


def recipe_servers():
    """{README port: the serve flags after `serve`, --port taken out} for the README's two server lines,
    checked to resolve with the real parser."""
    out = {}
    for argv in readme_recipe():
        if argv[:2] != ["python", "LLM_fine_turning/inference_psydt_lora.py"]:
            continue
        assert argv[2] == "serve", argv
        serve_parser().parse_args(argv[3:])  # every flag as written resolves
        at = argv.index("--port")
        out[argv[at + 1]] = argv[3:at] + argv[at + 2:]
    return out


@pytest.fixture(scope="module")
def own_servers(tiny_model_dir, memorised_adapter):
    """LoRA and base as the README's recipe starts them (safety off, so the crisis check sees the models'
    own replies; the base one under its own name), on the tiny model. The LoRA one handles 4 requests at a
    time and queues none (where the server has a queue): the judge's default 8 must come down to it, from
    the limit the server reports at /healthz where it does, else from its 429s."""
    servers = recipe_servers()
    assert len(servers) == 2
    test_only = ["--model_path", str(tiny_model_dir), "--no-do_sample"]
    no_queue = ["--max_queue", "0"] if "--max_queue" in serve_parser()._option_string_actions else []
    started = {}
    for port, flags in servers.items():
        # the LoRA server: 4 at a time, and replies up to 300 tokens for the test that asks for that many
        extra = ["--max_new_tokens", "40"] if "--no_adapter" in flags else [
            "--adapter_path", str(memorised_adapter), "--max_concurrency", "4", *no_queue, "--max_new_tokens", "300"]
        started[port] = Server(*flags, *test_only, *extra)
    lora = next(started[p] for p in servers if "--no_adapter" not in servers[p])
    base = next(started[p] for p in servers if "--no_adapter" in servers[p])
    yield lora, base, started
    for server in started.values():
        server.stop()


def test_the_whole_pipeline_on_our_own_server(own_servers, data_files, tmp_path, capsys):
    lora, base, _ = own_servers
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
    bad = sum(c[k] for c in counts.values() for k in ("unparseable", "out_of_range", "refused", "empty", "failed"))
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


def test_the_readme_generate_line_runs_as_written(own_servers, tmp_path):
    """The README's psydt-judge line, only its ports mapped to the servers started from the lines above it
    (and a few items): the base server's --served_model_name is the --gen_base_model it asks for."""
    _, _, started = own_servers
    line = next(argv for argv in readme_recipe() if argv[0] == "psydt-judge")
    argv = [re.sub(r"http://127\.0\.0\.1:(\d+)", lambda m: started[m.group(1)].url, a) for a in line[1:]]
    assert sum(a != b for a, b in zip(argv, line[1:])) == 2  # both URLs name a port the README's servers use
    out = tmp_path / "o"
    assert judge_psydt_lora.main([*argv, "--max_test_items", "4", "--gen_max_tokens", "16", "--out_dir", str(out),
                                  "--no_progress"]) == 0
    data = json.loads((out / "crisis.json").read_text("utf-8"))
    assert data["meta"]["failed"] == {"response": 0, "base_response": 0}
    assert data["meta"]["generators"]["base_response"]["model"] == "base"
    # two servers, two models: the adapter's replies are not the base model's (nothing shared through the cache)
    assert any(r["response"] != r["base_response"] for r in data["results"])


def test_the_default_concurrency_against_a_server_handling_4_loses_no_item(own_servers, tmp_path, capsys):
    lora, _, _ = own_servers
    out = tmp_path / "o"
    assert judge_psydt_lora.main(["generate", "--eval_set", "crisis", "--max_test_items", "40", "--gen_url",
                                  f"{lora.url}/v1", "--gen_model", "psydt", "--gen_max_tokens", "300", "--out_dir",
                                  str(out), "--no_progress"]) == 0  # --gen_concurrency: the default 8
    # (300 tokens: long enough that the requests refused at first wait longer than five flat 1-second retries)
    data = json.loads((out / "crisis.json").read_text("utf-8"))
    assert data["meta"]["failed"] == {"response": 0}
    assert all(isinstance(r["response"], str) for r in data["results"]) and len(data["results"]) == 40
    print(data["meta"]["usage"])
