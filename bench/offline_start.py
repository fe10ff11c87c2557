"""Benchmark: how long an offline start of the terminal chat takes to reach the prompt, with the default
guard model (Qwen3Guard, not downloaded) against the lexicon alone (`--safety_model none`) in the same run.

    python bench/offline_start.py [--package LLM_fine_turning] [--runs 2]

Offline is made at the network boundary: name resolution fails (socket.getaddrinfo raises gaierror, as on
a machine without network), everything above it -- modelscope's client and its retries included -- is real.
A tiny random Qwen3 is built in a temporary folder; the chat is started with stdin "/exit", so a run's
wall time is start -> prompt -> exit. `--package` points at another checkout's package to measure it
(e.g. the code before a change) with the same harness.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_CHAT = """
import socket, sys
def no_dns(*a, **k):
    raise socket.gaierror(-2, "Name or service not known")
socket.getaddrinfo = no_dns
from psydt_lora.infer_cli import cli
sys.argv = ["psydt-chat", *sys.argv[1:]]
sys.exit(cli())
"""
# the tests' tiny random Qwen3, built by their own helper in a child process started in tests/ (its folder is
# the child's first import path there), so this script's own imports stay the installed package's
BUILD_TINY = """
import sys
from pathlib import Path
from conftest import build_tiny_model
build_tiny_model(Path(sys.argv[1]))
"""


def start(package: Path, model: Path, cwd: Path, safety_model: str) -> tuple[float, str]:
    began = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", OFFLINE_CHAT, "--model_path", str(model), "--no_adapter",
                          "--safety_model", safety_model], input="/exit\n", capture_output=True, text=True, cwd=cwd,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package), "HOME": str(cwd)}, timeout=600)
    took = time.perf_counter() - began
    if res.returncode != 0 or "你：" not in res.stdout:
        raise SystemExit(f"the chat did not reach its prompt:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return took, next((line for line in res.stdout.splitlines() if "启用的安全层" in line), "")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--package", default=str(ROOT / "LLM_fine_turning"), help="folder holding psydt_lora")
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "tiny"
        subprocess.run([sys.executable, "-c", BUILD_TINY, str(model)], cwd=ROOT / "tests", check=True,
                       capture_output=True, timeout=600)
        (tmp / "cwd").mkdir()
        times = {"Qwen/Qwen3Guard-Gen-0.6B": [], "none": []}
        for _ in range(args.runs):
            for spec in times:
                took, line = start(Path(args.package), model, tmp / "cwd", spec)
                times[spec].append(took)
                print(f"--safety_model {spec}: {took:.1f} s  {line}", flush=True)
    guard, lexicon = statistics.median(times["Qwen/Qwen3Guard-Gen-0.6B"]), statistics.median(times["none"])
    print(f"median start -> prompt -> exit: default guard offline {guard:.1f} s, lexicon only {lexicon:.1f} s, "
          f"the guard's offline cost {guard - lexicon:.1f} s ({args.package})")


if __name__ == "__main__":
    main()
