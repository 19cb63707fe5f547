"""The `llava-moslora` command as a user runs it: the installed console script."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llava_moslora.cli import SUBCOMMANDS

SCRIPT = shutil.which("llava-moslora", path=str(Path(sys.executable).parent))


def run(*args):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=120)


def test_console_script_is_installed():
    assert SCRIPT is not None, "pip install -e . should have installed the llava-moslora script"


def test_top_level_help_lists_every_subcommand():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert name in result.stdout


def test_top_level_help_groups_the_subcommands():
    out = run("--help").stdout
    titles = ["getting started:", "data:", "train and export:", "evaluate and compare:", "talk to a checkpoint:"]
    assert [out.index(t) for t in titles] == sorted(out.index(t) for t in titles)
    assert out.index("data:") < out.index("validate-data") < out.index("train and export:") < out.index("    merge")
    assert out.index("talk to a checkpoint:") < out.index("    web")


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_subcommand_has_help_with_an_example(name):
    result = run(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no library's noise before the help
    assert f"usage: llava-moslora {name}" in result.stdout
    assert "example:" in result.stdout


@pytest.mark.parametrize("name", [n for n in SUBCOMMANDS if n != "train"])  # train's example is the script
def test_every_example_parses_as_written(name):
    """The example a --help ends with names every required option (argparse would refuse it otherwise)."""
    import shlex

    from llava_moslora.cli import build_parser

    words = shlex.split(SUBCOMMANDS[name][3], comments=True)
    assert words[:2] == ["llava-moslora", name]
    args = build_parser(name).parse_args(words[1:])
    assert args.command == name


@pytest.mark.parametrize("name", [n for n in SUBCOMMANDS if n != "train"])  # train: HfArgumentParser, both already
def test_every_option_takes_both_spellings(name):
    """--max_new_tokens and --max-new-tokens alike, for every long option of every command: the
    example, rewritten in the other spelling, parses to the same values."""
    import shlex

    from llava_moslora.cli import build_parser

    parser = build_parser(name)
    command = next(action for action in parser._actions if action.dest == "command").choices[name]
    for action in command._actions:
        for option in (o for o in action.option_strings if o.startswith("--")):
            twin = "--" + (option[2:].replace("_", "-") if "_" in option else option[2:].replace("-", "_"))
            assert twin in action.option_strings, f"{name} {option}: {twin} is not accepted"
    words = shlex.split(SUBCOMMANDS[name][3], comments=True)[1:]
    swapped = [w[:2] + (w[2:].replace("_", "-") if "_" in w else w[2:].replace("-", "_")) if w.startswith("--") else w
               for w in words]
    assert vars(build_parser(name).parse_args(swapped)) == vars(build_parser(name).parse_args(words))


def test_chat_takes_hyphenated_options():
    result = run("chat", "--model", "no/such-checkpoint-here", "--max-new-tokens", "3", "--top-p", "0.9")
    assert "unrecognized arguments" not in result.stderr and "no/such-checkpoint-here" in result.stderr


def test_no_command_prints_help_and_fails():
    result = run()
    assert result.returncode == 2 and "commands:" in result.stdout


def test_unknown_command_is_an_error():
    result = run("fly")
    assert result.returncode == 2 and "invalid choice: 'fly'" in result.stderr


def test_env_reports_the_stack():
    result = subprocess.run([sys.executable, "-m", "llava_moslora", "env", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    import torch
    assert info["torch"] == torch.__version__ and info["cuda_available"] == torch.cuda.is_available()
