"""Fixtures shared by every test room."""
import os
import subprocess
from collections import Counter

import pytest
import torch

from helpers import ROOT, TwoLayer, readme_env, save_bases, save_tiny_checkpoint


# Session fixtures too costly to make on each worker: the tests that use one share a worker.
MADE_ONCE = ("readme_workdir",)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Under scripts/test.sh's `-n 2 --dist loadgroup` a file's tests run on one worker, so its
    module fixtures are made once; so do the tests of a fixture in MADE_ONCE. The groups with the
    most slow tests come first, so the workers end together instead of one waiting for the
    other's last long file."""
    group_of = {}
    for item in items:
        shared = [name for name in MADE_ONCE if name in getattr(item, "fixturenames", ())]
        group_of[item] = shared[0] if shared else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group_of[item]))
    slow = Counter(group_of[item] for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[group_of[item]])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def two_layer():
    return TwoLayer()


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory):
    """A tiny CLIP tower (16 patch tokens) and a tiny Llama with a Vicuna-style tokenizer."""
    return save_bases(tmp_path_factory.mktemp("bases"))


@pytest.fixture(scope="session")
def tiny_base_factory(tmp_path_factory):
    root = tmp_path_factory.mktemp("more-bases")
    return lambda style, architecture: save_bases(root, style, architecture)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_bases, tmp_path_factory):
    """A stage-2 checkpoint: MoSLoRA (r=4, random non-zero adapters) on the tiny bases."""
    return save_tiny_checkpoint(tiny_bases, tmp_path_factory.mktemp("ckpt") / "moslora-tiny")


# Slowest ten of the suite (CI, 2 cores): ~64 s, once per session. The quickstart itself, shortened, through
# the same scripts (2 processes, both stages, evaluation, answers); the README tests go on from its output.
@pytest.fixture(scope="session")
def readme_workdir(tmp_path_factory):
    """A user's checkout after README.md's quickstart command, shortened: a folder whose entries
    link to this repository's (scripts, bases, .venv, ...), so commands run from it as written, and
    whose own runs/quickstart holds the quickstart's output. Returns (folder, the quickstart's
    completed process). Shared by tests/test_quickstart.py and tests/test_readme.py."""
    work = tmp_path_factory.mktemp("checkout")
    for entry in ROOT.iterdir():
        if entry.name not in {"runs", "eval_results", "checkpoints", "outputs", ".git"}:
            os.symlink(entry, work / entry.name)
    result = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=work, env=readme_env(work), capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return work, result
