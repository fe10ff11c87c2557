"""The README's flag tables are the user's reference: every flag of every script -- and of every subcommand,
found by walking the parsers, so a new subcommand is covered the day it is added -- is there, with its default."""
import argparse
import re

import pytest

import inference_psydt_lora
import judge_psydt_lora
import train_psydt_lora
from conftest import ROOT

ROWS = [line for line in (ROOT / "README.md").read_text("utf-8").splitlines() if line.startswith("| `--")]
PARSERS = {"train": train_psydt_lora.build_parser, "inference": inference_psydt_lora.build_parser,
           "inference-commands": inference_psydt_lora.build_command_parser, "judge": judge_psydt_lora.build_parser}


def _numbers(text):
    return {float(x) for x in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?", text)}


def commands(parser, path=()):
    """(subcommand path, parser) for the parser and every subparser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def flags_of(parser):
    for action in parser._actions:
        flags = [f for f in action.option_strings if f.startswith("--") and f != "--help"]
        if flags and action.help != argparse.SUPPRESS:
            yield flags[0], action


def rows_for(flag, command):
    """The README rows of `flag` (named in the row's first cell); for a subcommand, the rows whose second cell
    names it (`rubric`) when there are any -- one flag may have another default under another command."""
    rows = [r for r in ROWS if re.search("`" + re.escape(flag) + r"[` /]", r.split("|")[1])]
    named = [r for r in rows if command and re.search(f"`{re.escape(command)}`", r.split("|")[2])]
    return named or rows


def check_default(flag, default, row):
    if isinstance(default, bool) or default is None:
        return
    if isinstance(default, (int, float)):
        assert float(default) in _numbers(row), (flag, default, row)
    else:
        assert str(default).lstrip("./") in row, (flag, default, row)


def _has_default(default, row) -> bool:
    try:
        check_default("", default, row)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("script", PARSERS)
def test_every_flag_of_every_command_is_in_a_readme_table_with_its_default(script):
    seen = 0
    for path, parser in commands(PARSERS[script]()):
        for flag, action in flags_of(parser):
            rows = rows_for(flag, path[-1] if path else None)
            where = " ".join((script, *path))
            assert rows, f"{where}: {flag} is not in any README table"
            # a flag two scripts share may have a row in each table (--adapter_path: training's and inference's)
            fits = [r for r in rows if _has_default(action.default, r)]
            check_default(f"{where} {flag}", action.default, (fits or rows)[0])
            seen += 1
    assert seen > 10


def test_the_walk_reaches_every_judge_subcommand():
    found = {path[-1] for path, _ in commands(judge_psydt_lora.build_parser()) if path}
    assert {"generate", "rubric", "pairwise", "crisis", "report"} <= found
