"""`llava-moslora quickstart`: runs scripts/quickstart.sh of the checkout this package lives in.

The quickstart is a shell script on purpose: it goes through the same launch scripts a cluster
run uses. This command only finds and runs it, so both spellings do the same thing.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "quickstart.sh"


def add_arguments(parser, name: str = "quickstart") -> None:
    parser.add_argument("--out", default=None, help="output directory (default: runs/quickstart in the checkout)")
    parser.add_argument("--seed", type=int, default=0, help="ShapesVQA draw and training seed (default: %(default)s)")


def run(args, name: str = "quickstart") -> int:
    if not SCRIPT.is_file():
        print(f"{SCRIPT} not found: the quickstart needs a source checkout of llava-moslora "
              "(git clone, then `bash scripts/quickstart.sh`)")
        return 2
    command = ["bash", str(SCRIPT), "--seed", str(args.seed)] + (["--out", str(Path(args.out).resolve())] if args.out else [])
    return subprocess.call(command)
