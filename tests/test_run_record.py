"""The run record (psydt_run.json): typed settings grouped by the object they came from, never the command
line; records written by the releases before it (a flat "args" dict, tests/data/psydt_run_format1.json was
written by that code) still load in inference, export and the model card."""
import ast
import json
import shutil
from pathlib import Path

from psydt_lora.export.card import model_card
from psydt_lora.inference.generation import GenerationSettings
from psydt_lora.run_record import RUN_FILE, RunRecord
from psydt_lora.train.config import TrainConfig
from psydt_lora.train_cli import build_parser, config_from_args

FORMAT1 = Path(__file__).parent / "data" / "psydt_run_format1.json"
PKG = Path(__file__).resolve().parents[1] / "LLM_fine_turning" / "psydt_lora"


def test_a_format1_record_still_loads_with_every_field_it_had():
    raw = json.loads(FORMAT1.read_text("utf-8"))
    record = RunRecord.from_json(raw)
    assert record.stage == "sft" and record.preference is None
    assert record.setting("lora_r") == raw["args"]["lora_r"] == 4 and record.setting("max_steps") == 2
    assert record.system_prompt == raw["system_prompt"] and record.prompt_format == raw["prompt_format"]
    assert record.base_model.signature == raw["base_model"]["signature"] and record.base_model.repo == "Qwen/Qwen3-1.7B"
    assert record.heldout_file == raw["data"]["heldout"]["file"] and record.metrics == raw["metrics"]
    card = model_card(record, base="b", adapter="a", system_prompt=None, settings=GenerationSettings(), recipes=[])
    assert "| lora_r | 4 |" in card and "| max_steps | 2 |" in card and "| sample_mode | shared_prefix |" in card


def test_a_new_record_holds_typed_settings_and_round_trips():
    config = config_from_args(build_parser().parse_args(["--lora_r", "16", "--target_modules", "q_proj,v_proj",
                                                         "--max_length", "700"]))
    from psydt_lora.run_record import settings_dict

    record = RunRecord(settings=settings_dict(*config.parts()), stage=config.stage)
    raw = json.loads(json.dumps(record.to_json()))
    assert raw["format"] == 2 and "args" not in raw
    assert raw["settings"]["lora"] == {"r": 16, "alpha": 32, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    assert raw["settings"]["samples"] == {"max_length": 700, "mode": "shared_prefix", "pack_length": 0,
                                          "enable_thinking": False}
    back = RunRecord.from_json(raw)
    assert back.setting("r") == 16 and back.settings == raw["settings"]
    card = model_card(back, base="b", adapter="a", system_prompt=None, settings=GenerationSettings(), recipes=[])
    assert "| lora_r | 16 |" in card and "| target_modules | q_proj,v_proj |" in card and "| max_length | 700 |" in card


def test_the_cli_defaults_are_the_settings_defaults():
    """One place for each default: a flag's default and its settings field's default agree."""
    assert config_from_args(build_parser().parse_args([])) == TrainConfig()


def test_an_adapter_with_a_format1_record_loads_for_inference(tiny_model_dir, memorised_adapter, tmp_path):
    from psydt_lora.models import load_for_inference

    adapter = tmp_path / "adapter"
    shutil.copytree(memorised_adapter, adapter)
    shutil.copy(FORMAT1, adapter / RUN_FILE)
    loaded = load_for_inference(tiny_model_dir, adapter, device="cpu")
    assert loaded.record.setting("lora_r") == 4 and loaded.record.system_prompt


def _below_the_cli():
    for path in sorted(PKG.rglob("*.py")):
        if path.name.endswith("_cli.py") or path.name == "cli.py":  # the programs and their help formatter
            continue
        yield path, ast.parse(path.read_text("utf-8"))


def namespace_uses(tree) -> list[str]:
    """Where a module imports argparse, calls vars(args) or takes a parameter named `args` (the Trainer
    callbacks' on_* hooks excepted: their `args` is transformers' TrainingArguments)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if "argparse" in [a.name for a in node.names] + [getattr(node, "module", None) or ""]:
                found.append(f"{node.lineno}: imports argparse")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "vars" and node.args \
                and getattr(node.args[0], "id", None) == "args":
            found.append(f"{node.lineno}: vars(args)")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("on_"):
            if any(a.arg == "args" for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs):
                found.append(f"{node.lineno}: {node.name}(args)")
    return found


def test_no_module_below_the_programs_takes_the_argparse_namespace():
    found = [f"{path.relative_to(PKG)}:{where}" for path, tree in _below_the_cli() for where in namespace_uses(tree)]
    assert not found, found


def test_the_namespace_walk_sees_each_forbidden_shape():
    bad = "import argparse\ndef build(args, x):\n    return vars(args)\nclass C:\n    def on_log(self, args): pass\n"
    assert namespace_uses(ast.parse(bad)) == ["1: imports argparse", "2: build(args)", "3: vars(args)"]
