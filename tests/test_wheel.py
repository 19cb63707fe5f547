"""The package as a wheel, installed outside the checkout: the suites travel as package data and
the console script works (a checkout-only path found nothing after `pip install llava-moslora`)."""
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from helpers import ROOT

pytestmark = pytest.mark.slow


def test_a_wheel_installed_elsewhere_resolves_the_suites_and_runs_eval_help(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, text=True, timeout=600)
    wheel = next(wheels.glob("llava_moslora-*.whl"))
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=120)
    python = fresh / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the pinned stack is reused from this environment (its packages, not its editable llava_moslora)
    (site / "pinned-stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, text=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = subprocess.run([str(python), "-c", "import llava_moslora, llava_moslora.evaluation.benchmarks as b; "
                            "print(llava_moslora.__file__); print(','.join(b.resolve_benchmarks('moslora-paper')))"],
                           cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    where, names = found.stdout.split()
    assert where.startswith(str(site)), where  # the wheel's copy, not the checkout
    suite = [line.split("#")[0].strip() for line in (ROOT / "llava_moslora" / "evaluation" / "suites" / "moslora-paper.txt")
             .read_text().splitlines()]
    assert names.split(",") == [name for name in suite if name]
    helped = subprocess.run([str(fresh / "bin" / "llava-moslora"), "eval", "--help"], cwd=elsewhere,
                            capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "usage: llava-moslora eval" in helped.stdout and "moslora-paper" in helped.stdout
