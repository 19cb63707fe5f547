"""scripts/setup.sh's GPU options: TORCH picks the build of the pinned torch (and its index),
EXTRAS=gpu adds flash-attn and ninja. What needs no GPU is checked here: the commands each
option gives (--plan), the mistakes it names, and that the registry resolves what a GPU node
would install (pip's dry run: metadata only). Installing CUDA torch or building flash-attn needs
a GPU node and is not done here."""
import json
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT

TORCH_PIN = re.search(r"^torch==\S+", (ROOT / "constraints.txt").read_text(), re.M).group(0)


def setup(*args, **env):
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


@pytest.mark.parametrize("build, index", [("", None), ("cpu", "https://download.pytorch.org/whl/cpu"),
                                          ("cu126", "https://download.pytorch.org/whl/cu126"),
                                          ("cu128", "https://download.pytorch.org/whl/cu128")])
def test_torch_picks_the_index_of_the_pinned_version(build, index):
    result = setup("--plan", TORCH=build)
    assert result.returncode == 0, result.stderr
    torch_line = result.stdout.splitlines()[0]
    assert torch_line.endswith(f" {TORCH_PIN}") and "-c constraints.txt" in torch_line
    assert (f"--index-url {index} --extra-index-url https://pypi.org/simple" in torch_line) == bool(index)
    assert "-e .[dev,eval,web,qlora]" in result.stdout and ".[gpu]" not in result.stdout


def test_the_gpu_extra_builds_against_the_installed_torch():
    result = setup("--plan", TORCH="cu128", EXTRAS="gpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "pip install --no-build-isolation -c constraints.txt -e .[gpu]"
    pyproject = (ROOT / "pyproject.toml").read_text()
    gpu = re.search(r"^gpu = \[(.*?)^\]", pyproject, re.S | re.M).group(1)
    assert '"flash-attn>=' in gpu and '"ninja>=' in gpu


@pytest.mark.parametrize("env, message", [({"TORCH": "rocm6"}, "TORCH=rocm6: give cpu or a CUDA build"),
                                          ({"EXTRAS": "cuda"}, "EXTRAS=cuda: the extra extras are: gpu")])
def test_a_wrong_option_is_named_before_anything_installs(env, message):
    result = setup("--plan", **env)
    assert result.returncode == 2 and message in result.stderr and not result.stdout


def registry_reachable() -> bool:
    probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "--isolated", "ninja"],
                           capture_output=True, text=True, timeout=60)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def registry():
    if not registry_reachable():
        pytest.skip("PyPI is not reachable from here; the GPU node's resolution is not checked")


def dry_install(tmp_path, *args, **env):
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                             "--report", str(report), *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(report.read_text())["install"]


def test_the_registry_resolves_the_pinned_torchs_cuda_build(registry, tmp_path):
    """What `bash scripts/setup.sh` installs on a Linux GPU node from PyPI alone (no local wheels)."""
    [torch] = dry_install(tmp_path, "--isolated", "--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64",
                          "--python-version", "3.11", "--target", str(tmp_path / "t"), TORCH_PIN)
    assert torch["metadata"]["version"] == TORCH_PIN.split("==")[1]
    assert any(r.startswith(("cuda-toolkit", "nvidia-")) for r in torch["metadata"]["requires_dist"])


def test_the_registry_resolves_flash_attn_against_the_installed_torch(registry, tmp_path):
    """EXTRAS=gpu's flash-attn: its metadata builds against this torch (the CUDA compile is skipped here)."""
    [flash] = dry_install(tmp_path, "--no-build-isolation", "flash-attn>=2.7.4",
                          FLASH_ATTENTION_SKIP_CUDA_BUILD="TRUE")
    assert flash["metadata"]["name"].replace("_", "-") == "flash-attn"


def test_vlmevalkits_venv_is_the_parity_tests_commit_and_a_matching_torchvision():
    result = setup("--vlmeval", "--plan", VLMEVAL_VENV="/tmp/v", VLMEVALKIT_DIR="/tmp/kit")
    assert result.returncode == 0, result.stderr
    steps = result.stdout.splitlines()
    parity_commit = re.search(r"commit (\w{8})", (ROOT / "tests" / "evaluation" / "test_plan.py").read_text()).group(1)
    assert steps[0].endswith("-m venv /tmp/v")
    assert re.fullmatch(rf"git clone https://github.com/open-compass/VLMEvalKit /tmp/kit && git -C /tmp/kit "
                        rf"checkout {parity_commit}\w*", steps[1])
    assert steps[2] == "pip install torch==2.14.1 torchvision==0.29.1"
    assert steps[3].endswith("-e /tmp/kit rouge-score") and steps[4].endswith("-e .[eval,dev]")


def test_the_registry_pairs_that_torchvision_with_that_torch(registry, tmp_path):
    [vision] = dry_install(tmp_path, "--isolated", "--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64",
                           "--python-version", "3.11", "--target", str(tmp_path / "t"), "torchvision==0.29.1")
    from packaging.requirements import Requirement

    [torch] = [Requirement(r) for r in vision["metadata"]["requires_dist"] if Requirement(r).name == "torch"]
    assert torch.specifier.contains("2.14.1") and not torch.specifier.contains(TORCH_PIN.split("==")[1])
