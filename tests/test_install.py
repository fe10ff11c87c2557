"""What gets installed: the server is an optional extra that training never needs; the README's two install
commands still bring every extra, and constraints.txt pins every package the project names."""
import os
import re
import subprocess
import sys

import pytest

from conftest import DIALOGUES, ROOT

SERVE_ONLY = ("fastapi", "uvicorn", "starlette", "openai")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.10 has no TOML reader of its own")
    return tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]


def name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def editable_extras(requirements_file: str) -> set:
    lines = (ROOT / requirements_file).read_text("utf-8").splitlines()
    found = [re.fullmatch(r"-e \.(?:\[([\w,]+)\])?", line.strip()) for line in lines]
    return {e for m in found if m and m.group(1) for e in m.group(1).split(",")}


def test_the_server_is_an_extra_and_the_readme_commands_install_every_extra():
    project = pyproject()
    extras = project["optional-dependencies"]
    assert not {name(r) for r in project["dependencies"]} & set(SERVE_ONLY)  # `pip install -e .` trains without them
    assert {name(r) for r in extras["serve"]} == {"fastapi", "uvicorn", "openai"}
    assert "serve" in editable_extras("requirements.txt")  # the user's command: train, chat, test and serve
    assert editable_extras("requirements-dev.txt") == set(extras)  # the tests' command: everything


def test_constraints_pin_every_package_the_project_names():
    """CI installs with -c constraints.txt: a dependency added without its pin would float. torch is installed
    first, per platform (CPU or CUDA build), so it is the one package left out."""
    project = pyproject()
    named = {name(r) for r in project["dependencies"]}
    named |= {name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    pins = {}
    for line in (ROOT / "constraints.txt").read_text("utf-8").splitlines():
        if "==" in line:
            pins[name(line)] = line.split("==")[1]
    assert named - {"torch"} <= pins.keys(), sorted(named - {"torch"} - pins.keys())
    assert "torch" not in pins


def blocked(code: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run `code` with the serve extra made unimportable, as on a machine that installed only `pip install -e .`."""
    prelude = "import sys\nfor m in %r: sys.modules[m] = None\n" % (SERVE_ONLY,)
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT / "LLM_fine_turning")})


@pytest.mark.slow
def test_training_needs_no_server_libraries(tiny_model_dir, tmp_path):
    """The training path, the Trainer included, imports and runs a dry run with fastapi, uvicorn and openai
    unimportable; chat and the batch test import without them too."""
    data = tmp_path / "train.json"
    data.write_text(__import__("json").dumps(DIALOGUES, ensure_ascii=False), "utf-8")
    code = ("import train_psydt_lora, inference_psydt_lora\n"
            "from psydt_lora.train import job, preference, trainer  # noqa: F401\n"
            "import psydt_lora.inference.chat, psydt_lora.evaluation.batch_run, psydt_lora.safety.guard\n"
            "trainer.make_trainer_class(), preference.make_preference_trainer_class()  # transformers.Trainer and ours\n"
            "sys.exit(train_psydt_lora.main(sys.argv[1:]))\n")
    res = blocked(code, "--model_local_dir", str(tiny_model_dir), "--train_file", str(data), "--no-do_eval",
                  "--dry_run", "--no-sample_cache")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "shared_prefix 打包" in res.stdout


def test_serving_without_its_extra_says_how_to_install_it(tiny_model_dir, tmp_path):
    code = "import inference_psydt_lora\nsys.exit(inference_psydt_lora.cli())\n"
    res = blocked(code, "--model_path", str(tiny_model_dir), "--no_adapter", "--mode", "serve", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "fastapi、uvicorn" in res.stderr and "pip install -e '.[serve]'" in res.stderr
    assert "[运行]" not in res.stdout  # said before any weight was loaded
