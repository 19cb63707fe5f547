"""README.md's commands, run as written in a checkout after the (shortened) quickstart, so the
front door cannot drift from the code; and the docs it links to, checked against what they name.
The quickstart itself runs first, exactly as a newcomer runs it (tiny data, few steps).

Every command of the README's ```bash blocks gets a plan from PLANS: run as written; run with
input (the chat's interactive mode, the web page's first answer); run as a dry run on the
embedded bases (the cluster recipes: their variables and flags reach the launch checks and the
trainer's arguments); or not run offline, with the reason. A command no plan covers fails the
test, and so does a plan no command uses."""
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import ROOT, free_port, readme_env, wait_for_server

README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

# (pattern on the command, plan, why); the first match wins.
PLANS = [
    (r"^bash scripts/test\.sh\b", "skip", "runs this suite itself"),
    (r"^bash scripts/quickstart\.sh$", "quickstart", "run by the readme_workdir fixture, shortened"),
    (r"^source \.venv/bin/activate$", "activate", "readme_env: .venv/bin first on PATH"),
    (r"^sbatch ", "skip", "needs SLURM; the node variables it sets: tests/train/test_launchers.py"),
    (r"^TORCH=\S+ EXTRAS=gpu bash scripts/setup\.sh$", "skip",
     "installs CUDA torch and builds flash-attn, a GPU node's work; tests/test_setup.py checks what it runs"),
    (r"llava-hf/", "skip", "needs a hub LLaVA in the cache; a llava-hf start: tests/model/test_foreign_llava_hf.py"),
    (r"^bash eval/run\.sh \S+ moslora-paper\b", "skip", "needs VLMEvalKit and its network downloads"),
    (r"^llava-moslora study --quick$", "skip", "5.8 min of training; its --dry-run is run"),
    (r"^llava-moslora study --grid studies/(moslora|moelora)-", "skip",
     "needs the papers' bases from the hub; tests/study/test_paper_recipes.py dry-runs each on config-only bases"),
    (r"^bash scripts/study\.sh$", "skip", "39 min of training; tests/study runs a small study end to end"),
    (r"^(\w+=\S+ )*bash scripts/(pretrain|finetune)\.sh --help$", "run", ""),
    (r"^(\w+=\S+ )*bash scripts/(pretrain|finetune)\.sh\b", "dry_run", ""),
    (r"^bash scripts/chat\.sh (?!.*--prompt)", "stdin", ""),
    (r"^bash scripts/web\.sh ", "web", ""),
    (r"^(llava-moslora|bash scripts/chat\.sh) ", "run", ""),
]
QUESTION = "How many shapes are in the image?"


# Slowest ten of the suite (CI, 2 cores): ~64 s, once. The quickstart itself, shortened, through the same
# scripts (2 processes, both stages, evaluation, answers); the README's other commands go on from its output.
@pytest.fixture(scope="module")
def readme_workdir(tmp_path_factory):
    """A user's checkout after README.md's quickstart command, shortened: a folder whose entries
    link to this repository's (scripts, bases, .venv, ...), so commands run from it as written, and
    whose own runs/quickstart holds the quickstart's output. Returns (folder, the quickstart's
    completed process)."""
    work = tmp_path_factory.mktemp("checkout")
    for entry in ROOT.iterdir():
        if entry.name not in {"runs", "eval_results", "checkpoints", "outputs", ".git"}:
            os.symlink(entry, work / entry.name)
    result = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=work, env=readme_env(work), capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return work, result


@pytest.mark.slow
def test_shortened_quickstart_runs_end_to_end(readme_workdir):
    work, result = readme_workdir
    out = work / "runs" / "quickstart"
    for path in ("data/ShapesVQA_MCQ.tsv", "data/scenes.json", "stage1/trainable.safetensors",
                 "stage2/llava_moslora.json", "eval/stage2/stage2_ShapesVQA_MCQ_acc.csv",
                 "eval/stage2/stage2_ShapesVQA_YN_score.csv", "eval/abilities/abilities.md"):
        assert (out / path).is_file(), path
    assert "| Overall | overall |" in result.stdout and "== sample answers about" in result.stdout
    assert "quickstart: done in" in result.stdout
    # LLaVA's recipe: stage 1 trains the projector alone, stage 2 adapters and the projector,
    # and no stage trains a weight of the LLM or the vision tower itself
    stage1 = set(load_file(out / "stage1" / "trainable.safetensors"))
    stage2 = set(load_file(out / "stage2" / "trainable.safetensors"))
    assert stage1 and all(".multi_modal_projector." in name for name in stage1), sorted(stage1)[:5]
    assert stage1 <= stage2
    adapters = stage2 - stage1
    assert adapters and all(".language_model." in n and ".lora_" in n for n in adapters), sorted(adapters)[:5]
    # nothing a user cannot act on
    for noise in ("FutureWarning", "deprecated", "requires torchvision", "OMP_NUM_THREADS", "Failed to load"):
        assert noise not in result.stdout + result.stderr, noise


def test_an_output_folder_of_other_files_is_refused_not_emptied(tmp_path):
    (tmp_path / "thesis.tex").write_text("months of work")
    result = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "holds files the quickstart did not write" in result.stderr
    assert (tmp_path / "thesis.tex").read_text() == "months of work"


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        pending = ""
        for line in block.splitlines():
            pending += line
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            words = shlex.split(pending, comments=True)
            if words:
                commands.append(shlex.join(words))
            pending = ""
    return commands


def readme_python(text: str) -> list[str]:
    """The ```python blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def plan(command: str) -> tuple[int, str, str]:
    for index, (pattern, action, why) in enumerate(PLANS):
        if re.search(pattern, command):
            return index, action, why
    raise AssertionError(f"README.md command with no plan in tests/test_readme.py: {command}")


def test_every_readme_command_has_a_plan_and_every_plan_a_command():
    commands = readme_commands(README.read_text())
    used = {plan(c)[0] for c in commands}
    assert used == set(range(len(PLANS))), [PLANS[i][0] for i in set(range(len(PLANS))) - used]
    run = [c for c in commands if plan(c)[1] not in ("skip", "activate")]
    assert len(run) >= 15, run  # the offline ones: eval, abilities, chat, web, merge, export, study, scripts


def dry_run_env(work: Path) -> dict:
    """The cluster recipes' defaults (Vicuna-7B, CLIP-L, LLaVA's data) replaced by the embedded
    bases and the quickstart's data: what a command sets itself still wins. The quickstart's
    stage 1 stands where pretrain.sh's default OUTPUT_DIR would have put LLaVA's."""
    quickstart = work / "runs" / "quickstart"
    stage1 = work / "checkpoints" / "llava-v1.5-7b-pretrain"
    if not stage1.exists():
        stage1.parent.mkdir(exist_ok=True)
        stage1.symlink_to(quickstart / "stage1")
    return {"MODEL": str(work / "bases" / "shapes-tiny" / "llm"), "VISION_TOWER": str(work / "bases" / "shapes-tiny" / "vision"),
            "DATA_PATH": str(quickstart / "data" / "instruct.json"), "IMAGE_FOLDER": str(quickstart / "data" / "images")}


def first_web_answer(command: str, work: Path, env: dict) -> str:
    """Start the README's web command on a free port, ask one question about a held-out image
    through the page's own API, and stop the server; returns the problem, or "" when it answered."""
    from gradio_client import Client, handle_file

    port = free_port()
    server = subprocess.Popen(["bash", "-c", f"{command} --port {port}"], cwd=work, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        problem = wait_for_server(server, url, seconds=240)
        if problem:
            return problem
        image = work / "runs" / "quickstart" / "data" / "images" / "test_000000.png"
        *panes, status = list(Client(url, verbose=False).submit(QUESTION, handle_file(str(image)), 0, 1, 8,
                                                                 api_name="/ask"))[-1]
        answer = panes[0][-1]["content"] if panes and panes[0] else None
        return "" if status == "done" and answer else f"no answer: status {status!r}, panes {panes!r}"
    finally:
        subprocess.run(["pkill", "-TERM", "-s", str(server.pid)], check=False)
        server.wait(timeout=60)


def run_one(command: str, action: str, work: Path, env: dict) -> str:
    """Run one README command as planned; returns the problem, or "" when it did what it says."""
    if action == "web":
        return first_web_answer(command, work, env)
    stdin = None
    if action == "dry_run":
        env = {**env, **dry_run_env(work)}
        command += "" if "--dry_run" in command else " --dry_run"
    elif action == "stdin":
        stdin = QUESTION + "\n"
    result = subprocess.run(["bash", "-c", command], cwd=work, env=env, input=stdin, capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        return f"exit {result.returncode}\n{result.stdout[-1500:]}\n{result.stderr[-2500:]}"
    if action == "dry_run" and "dry run: nothing was trained" not in result.stdout:
        return "no dry-run summary:\n" + result.stdout[-1500:]
    if "--prompt" in command and len(result.stdout.splitlines()) != command.count("--prompt"):
        return "not one answer per --prompt:\n" + result.stdout
    if action == "stdin" and not result.stdout.strip():
        return "no answer to the question on stdin"
    return ""


@pytest.mark.slow
# Slowest ten of the suite (CI, 2 cores): ~79 s. Every README command as a newcomer types it, each its own
# process (eval, abilities, chat, merge, export, the Python examples): the README is the product's front door.
def test_every_offline_readme_command_runs_as_written(readme_workdir):
    work, _ = readme_workdir
    env = readme_env(work)
    problems, ran = [], []
    for command in readme_commands(README.read_text()):
        _, action, _ = plan(command)
        if action in ("skip", "activate", "quickstart"):
            continue
        problem = run_one(command, action, work, env)
        ran.append(command)
        if problem:
            problems.append(f"$ {command}\n{problem}")
    assert not problems, "\n\n".join(problems)
    # the Python examples (loading the merged directory, the PEFT adapter), after the commands that write them
    printed = []
    for block in readme_python(README.read_text()):
        result = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", block], cwd=work, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0 and result.stdout.strip(), f"{block}\n{result.stdout}\n{result.stderr[-3000:]}"
        printed.append(result.stdout.strip())
    # transformers, prompted by the merged directory's own chat template, answers as our chat does
    ours = subprocess.run(["bash", "scripts/chat.sh", "--model", "runs/quickstart/stage2", "--image",
                           "runs/quickstart/data/images/test_000000.png", "--prompt", QUESTION], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert printed[0] == ours.stdout.strip(), (printed[0], ours.stdout)
    # what the commands promise to write, they wrote
    for path in ("eval_results/compare/abilities.md", "eval_results/compare/radar_ShapesVQA_MCQ.png",
                 "runs/quickstart/merged/config.json", "runs/quickstart/peft/adapter_config.json"):
        assert (work / path).is_file(), path
    assert [p.name for p in (work / "checkpoints").iterdir()] == ["llava-v1.5-7b-pretrain"]  # dry runs write nothing


def script_variables(script: str) -> set[str]:
    """The variables a launch script's --help documents (upper-case names at the start of a line)."""
    help_text = subprocess.run(["bash", str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True,
                               check=True).stdout
    names = set()
    for line in help_text.splitlines():
        lead = re.match(r"^  ([A-Z][A-Z0-9_]*(?:, [A-Z][A-Z0-9_]*)*)", line)
        if lead:
            names.update(lead.group(1).split(", "))
        names.update(re.findall(r"\b([A-Z][A-Z0-9_]{2,}) \[", line))  # "LR [2e-4], MM_PROJECTOR_LR [2e-5]"
    return names - {"SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_JOB_ID", "CUDA"}


def test_training_doc_lists_every_variable_the_scripts_take():
    table = (ROOT / "docs" / "TRAINING.md").read_text().split("## The variables", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    for script in ("pretrain.sh", "finetune.sh"):
        variables = script_variables(script)
        assert {"MODEL", "ZERO", "REPORT_TO"} & variables, variables  # the parse found them
        assert variables <= documented, f"{script}: not in docs/TRAINING.md: {sorted(variables - documented)}"


def test_links_in_the_readme_and_docs_lead_somewhere():
    broken = []
    for doc in DOCS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not target.startswith(("http://", "https://")) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_readme_is_a_map_read_in_two_minutes():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    assert len(README.read_text().split()) <= 1200  # as `wc -w README.md` counts
