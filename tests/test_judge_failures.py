"""The judge when things go wrong, against scripted servers (tests/judge_server.py, real HTTP): two servers
under one model name kept apart in the cache; nothing listening, timeouts and HTTP errors counted as what
they are (never as parse failures) and a run whose every request failed exits 3 naming the URL; empty
answers their own status; the back-off grows past a short Retry-After; a server that admits fewer requests
than the judge's concurrency loses no item; a model the server does not list is refused before any pass;
the chart draws no bar where there is no valid verdict; Ctrl-C under a closed stdout exits 130, no
traceback, the answers so far kept."""
import json
import os
import signal
import socket
import subprocess
import sys
import types

import pytest

from conftest import ROOT
from judge_server import JudgeServer, cache_rows, judge_flags

import judge_psydt_lora
from psydt_lora.errors import run_cli
from psydt_lora.judge import endpoint as endpoint_module
from psydt_lora.judge import report
from psydt_lora.judge.endpoint import Cache, Endpoint, EndpointConfig

SCRIPT = ROOT / "LLM_fine_turning" / "judge_psydt_lora.py"


def write_results(path, replies, base=None):
    results = [{"index": i, "id": f"d{i}", "normalizedTag": "情绪", "reference": "参考", "response": reply,
                "context": [{"role": "user", "content": f"来访者的话 {i}"}], "history_tail": []}
               for i, reply in enumerate(replies)]
    for r, b in zip(results, base or []):
        r["base_response"] = b
    path.write_text(json.dumps({"meta": {"adapter": "lora_adapter"}, "results": results}, ensure_ascii=False), "utf-8")
    return path


def nothing_listening() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_two_servers_under_one_model_name_never_share_an_answer(tmp_path):
    lora, base = JudgeServer(lambda body: "LoRA 服务的回答"), JudgeServer(lambda body: "基础模型服务的回答")
    try:
        out = tmp_path / "o"
        args = ["generate", "--eval_set", "crisis", "--max_test_items", "3", "--out_dir", str(out), "--no_progress",
                "--gen_url", lora.url, "--gen_model", "psydt", "--gen_base_url", base.url, "--gen_base_model", "psydt"]
        assert judge_psydt_lora.main(args) == 0
        results = json.loads((out / "crisis.json").read_text("utf-8"))["results"]
        assert [r["response"] for r in results] == ["LoRA 服务的回答"] * 3
        assert [r["base_response"] for r in results] == ["基础模型服务的回答"] * 3
        assert len(lora.requests) == 3 and len(base.requests) == 3
        assert judge_psydt_lora.main(args) == 0  # a rerun: both answered from the cache, still apart
        assert len(lora.requests) == 3 and len(base.requests) == 3
        again = json.loads((out / "crisis.json").read_text("utf-8"))["results"]
        assert [r["base_response"] for r in again] == ["基础模型服务的回答"] * 3
    finally:
        lora.stop()
        base.stop()


def test_nothing_listening_is_a_connection_failure_and_exit_3_naming_the_url(tmp_path, capsys):
    url = nothing_listening()
    results = write_results(tmp_path / "res.json", ["回复一 ANS<[1, 1, 1, 1]>", "回复二"])
    out = tmp_path / "o"
    code = run_cli(judge_psydt_lora.main, ["rubric", "--results", str(results), "--out_dir", str(out),
                                           *judge_flags(url)])  # the default 5 retries: none waited for
    printed = capsys.readouterr()
    assert code == 3
    assert f"连不上 {url}" in printed.out and "请求 2 次（重试 0" in printed.out
    assert url in printed.err and "全部失败" in printed.err and "连接失败 2" in printed.err
    assert "请求失败 2（连接失败 2）" in printed.out and "无法解析 0" in printed.out and "解析失败" not in printed.out
    data = json.loads((out / "rubric-cpsycoune.json").read_text("utf-8"))
    s = data["summary"]["lora"]
    assert s["counts"]["failed"] == 2 and s["counts"]["unparseable"] == 0 and s["failures"] == {"connection": 2}
    assert all(v["error"] == "connection" for v in data["items"])
    assert "连接失败 2" in (out / "report.md").read_text("utf-8")
    assert "Traceback" not in printed.err


def test_timeouts_http_errors_and_empty_answers_are_each_their_own_count(tmp_path, judge, capsys):
    results = write_results(tmp_path / "res.json", ["ANS<[1, 1, 1, 1]>", "SLOW ANS<[1, 1, 1, 1]>", "HTTP500", "ANS<>"])
    out = tmp_path / "o"
    assert judge_psydt_lora.main(["rubric", "--results", str(results), "--out_dir", str(out),
                                  *judge_flags(judge.url, "--judge_retries", "0")]) == 0  # not every request failed
    data = json.loads((out / "rubric-cpsycoune.json").read_text("utf-8"))
    s = data["summary"]["lora"]
    assert s["counts"] == {"ok": 1, "unparseable": 0, "out_of_range": 0, "refused": 0, "empty": 1, "failed": 2}
    assert s["failures"] == {"timeout": 1, "http 500": 1}
    printed = capsys.readouterr().out
    assert "空回答 1，请求失败 2（超时 1，HTTP 500 1）" in printed and "拒答 0" in printed
    md = (out / "report.md").read_text("utf-8")
    assert "| 空回答 | 1 |" in md and "| 拒答 | 0 |" in md and "lora 超时 1，HTTP 500 1" in md


def test_pairwise_counts_a_failed_request_as_failed_not_invalid(tmp_path, judge, capsys):
    results = write_results(tmp_path / "res.json", ["好 WIN", "HTTP500 一"], base=["一般", "一般"])
    out = tmp_path / "o"
    assert judge_psydt_lora.main(["pairwise", "--a", str(results), "--out_dir", str(out),
                                  *judge_flags(judge.url, "--judge_retries", "0")]) == 0
    s = json.loads((out / "pairwise-lora-vs-base.json").read_text("utf-8"))["summary"]
    assert s["counts"] == {"win": 1, "tie": 0, "loss": 0, "invalid": 0, "failed": 1}
    assert s["failures"] == {"http 500": 2}
    assert "无效 0，请求失败 1（HTTP 500 2）" in capsys.readouterr().out


def test_the_back_off_grows_past_a_short_retry_after(tmp_path, judge, monkeypatch):
    waits = []
    monkeypatch.setattr(endpoint_module, "time", types.SimpleNamespace(time=endpoint_module.time.time, sleep=waits.append))
    ep = Endpoint(EndpointConfig(judge.url, "m", retries=5, backoff=1.0), Cache(tmp_path / "c.sqlite"))
    answer = ep.ask("x", [{"role": "user", "content": "ALWAYS429"}])
    # Retry-After: 1 every time; the waits still double (with jitter of half to all): 1, 1-2, 2-4, 4-8, 8-16
    assert len(waits) == 5 and min(waits) >= 1 and waits == sorted(waits) and waits[-1] >= 8, waits
    assert answer.error == "http 429" and len(judge.requests) == 6


def test_a_server_admitting_fewer_than_the_concurrency_loses_no_item(tmp_path, judge):
    judge.limit, judge.delay = 2, 0.05  # admits 2 at a time; the rest 429 with a 10 ms Retry-After
    ep = Endpoint(EndpointConfig(judge.url, "m", concurrency=8, backoff=0.01), Cache(tmp_path / "c.sqlite"))
    answers = ep.ask_all([("x", [{"role": "user", "content": f"条目 {i} ANS<[1, 1, 1, 1]>"}]) for i in range(16)],
                         desc="", progress=False)
    assert [a.error for a in answers] == [None] * 16 and ep.usage.failed == 0
    assert ep.gate.limit < 8  # the in-flight limit came down towards what the server admits
    assert sum(1 for _, status in judge.requests if status == 429) < 16  # the first wave's 6 and a few probes


def test_the_limit_a_server_reports_caps_the_requests_in_flight(tmp_path, judge, capsys):
    judge.limit, judge.delay = 2, 0.05
    judge.health = {"status": "ok", "running": 0, "queued": 0, "max_concurrency": 2, "max_queue": 0}
    results = write_results(tmp_path / "res.json", [f"回复 {i} ANS<[1, 1, 1, 1]>" for i in range(8)])
    assert judge_psydt_lora.main(["rubric", "--results", str(results), "--out_dir", str(tmp_path / "o"),
                                  *judge_flags(judge.url, "--judge_concurrency", "8")]) == 0
    assert [status for _, status in judge.requests] == [200] * 8  # never a 429: at most 2 in flight from the start
    assert f"[接口] {judge.url} 说它同时处理 2 个请求" in capsys.readouterr().out


def test_a_model_the_server_does_not_list_is_refused_before_any_request(tmp_path, judge, capsys):
    judge.models = ["psydt"]
    out = tmp_path / "o"
    args = ["generate", "--eval_set", "crisis", "--max_test_items", "2", "--out_dir", str(out), "--no_progress",
            "--gen_url", judge.url, "--gen_model", "psydt", "--gen_base_model", "base"]
    assert run_cli(judge_psydt_lora.main, args) == 2
    err = capsys.readouterr().err
    assert judge.url in err and "'base'" in err and "'psydt'" in err and "--served_model_name base" in err
    assert judge.requests == []  # refused before the LoRA pass, not after it
    judge.models = ["psydt", "base"]
    assert judge_psydt_lora.main(args) == 0


def test_the_chart_draws_no_bar_where_there_is_no_valid_verdict(tmp_path, judge, monkeypatch):
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.append(fig))
    results = write_results(tmp_path / "res.json", ["ANS<[2, 3, 3, 1]>", "ANS<[1, 2, 2, 1]>"],
                            base=["ANS<不知道>", "ANS<>"])  # the base model: not one valid verdict
    out = tmp_path / "o"
    assert judge_psydt_lora.main(["rubric", "--results", str(results), "--out_dir", str(out), *judge_flags(judge.url)]) == 0
    ax = figures[-1].axes[0]
    bars = {c.get_label(): c.patches for c in ax.containers if hasattr(c, "patches")}
    assert len(bars["lora"]) == 4 and all(p.get_height() > 0 for p in bars["lora"])
    assert bars.get("base", []) == []  # no zero-height bar that would read as a score of 0
    marks = [t for t in ax.texts if t.get_text() in (report.NO_VERDICT, "no valid verdict")]
    assert len(marks) == 4


def test_ctrl_c_under_a_closed_stdout_exits_130_without_traceback_and_keeps_the_answers(tmp_path, judge):
    n = 12
    results = write_results(tmp_path / "res.json", [f"回复 {i} ANS<[1, 2, 2, 1]>" for i in range(n)])
    out = tmp_path / "o"
    args = ["rubric", "--results", str(results), "--out_dir", str(out), *judge_flags(judge.url)]
    judge.hold_after = 5
    err_file = tmp_path / "stderr.txt"
    with err_file.open("w") as err:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=err,
                                env={**os.environ, "PYTHONPATH": ""})
        try:
            judge.wait_for(lambda: sum(judge.answered.values()) == 5 and judge.held > 0)
            judge.wait_for(lambda: cache_rows(out / "cache.sqlite") == 5)
            proc.stdout.close()  # `| tee log` ended by the same Ctrl-C: nobody reads stdout any more
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    printed = err_file.read_text("utf-8")
    assert code == 130, printed
    assert "Traceback" not in printed and "[中断]" in printed and str(out / "cache.sqlite") in printed
    assert cache_rows(out / "cache.sqlite") == 5
    judge.hold_after = None
    judge.release.set()
    assert judge_psydt_lora.main(args) == 0
    data = json.loads((out / "rubric-cpsycoune.json").read_text("utf-8"))
    assert data["summary"]["lora"]["counts"]["ok"] == n and data["meta"]["usage"]["cached"] == 5
