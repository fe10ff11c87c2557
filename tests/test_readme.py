"""The README's flag tables are the user's reference: every flag of both scripts is there, with its default."""
import re

import pytest

import inference_psydt_lora
import train_psydt_lora
from conftest import ROOT

ROWS = [line for line in (ROOT / "README.md").read_text("utf-8").splitlines() if line.startswith("| `--")]


def _numbers(text):
    return {float(x) for x in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?", text)}


@pytest.mark.parametrize("parser", [train_psydt_lora.build_parser(), inference_psydt_lora.build_parser()],
                         ids=["train", "inference"])
def test_every_flag_is_in_a_readme_table_with_its_default(parser):
    for action in parser._actions:
        flags = [f for f in action.option_strings if f.startswith("--") and f != "--help"]
        if not flags:
            continue
        rows = [r for r in ROWS if re.search(r"`" + re.escape(flags[0]) + r"[` /]", r)]
        assert rows, f"{flags[0]} is not in any README table"
        default, row = action.default, rows[0]
        if isinstance(default, bool) or default is None:
            continue
        if isinstance(default, (int, float)):
            assert float(default) in _numbers(row), (flags[0], default, row)
        else:
            assert str(default).lstrip("./") in row, (flags[0], default, row)
