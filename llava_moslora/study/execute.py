"""Running a study: data and stage 1 when the grid asks for them, then every stage-2 run through
scripts/finetune.sh (so DeepSpeed and every GPU, as on a cluster), each evaluated in this
process through the evaluation room.

Resumable: a run that finished (run.json says so, with the same flags) is not run again; an
interrupted one continues from its newest checkpoint-N (--resume_from_checkpoint auto). A run
whose flags changed since it was made is an error, never silently mixed in.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..train.metrics import METRICS_FILE
from .grid import Grid, GridError, flag_list
from .plan import Run

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
RUN_FILE = "run.json"
DONE_FILE = "done.json"


class StudyStopped(Exception):
    """A launch ended early (signal or failure); the message says how to go on."""

    def __init__(self, message: str, code: int, wall_s: Optional[float] = None) -> None:
        super().__init__(message)
        self.code, self.wall_s = code, wall_s


@dataclass
class Inputs:
    """What every stage-2 run trains from and is scored on."""

    stage1: Path
    data_path: Path
    image_folder: Optional[Path]
    data_root: Optional[Path]  # local benchmark TSVs (None: $LMUData)
    llm_path: str  # the language model the stage-1 checkpoint was built on

    def record(self, launch: dict[str, str]) -> dict:
        """What a finished run was made from, beyond its flags (compared when the study is run again)."""
        return {"stage1": str(self.stage1), "data_path": str(self.data_path),
                "image_folder": str(self.image_folder) if self.image_folder else None, "launch": launch}


# A run's environment is built from an allow-list: what a variable left in the user's shell may
# change is where and how the run is launched, never what it trains (ADAPTER, LR, BITS, ... are
# the study's to set, through flags or stage1.env).
# Launch settings (scripts/lib/launch.sh): the grid's `launch:` gives defaults, the environment
# overrides them, and run.json records them.
LAUNCH_SETTINGS = ("NUM_GPUS", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "HOSTFILE", "LAUNCHER_ARGS",
                   "SHUTDOWN_TIMEOUT", "ZERO", "GLOBAL_BATCH", "PER_DEVICE_BATCH", "MODEL", "VISION_TOWER", "PYTHON")
# The system's own: the shell, locale, paths, and what the job scheduler, the accelerators, the
# communication libraries and the Hugging Face caches are told.
SYSTEM_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PWD",
                    "HOSTNAME", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "VIRTUAL_ENV", "LD_LIBRARY_PATH",
                    "LD_PRELOAD", "OMP_NUM_THREADS", "DISPLAY")
SYSTEM_PREFIXES = ("LC_", "XDG_", "CONDA", "SLURM_", "PMI_", "PMIX_", "OMPI_", "CUDA_", "NVIDIA_", "ROCR_", "HIP_",
                   "NCCL_", "GLOO_", "UCX_", "FI_", "TORCH", "PYTORCH_", "DS_", "MKL_", "KMP_", "HF_", "HUGGINGFACE_",
                   "TRANSFORMERS_", "SSH_", "LLAVA_MOSLORA_")


def inherited(name: str) -> bool:
    """Whether a study run gets this variable of the user's environment."""
    return name in LAUNCH_SETTINGS or name in SYSTEM_VARIABLES or name.startswith(SYSTEM_PREFIXES)


@dataclass
class Launcher:
    """Runs the stage scripts with the grid's launch settings (the environment wins), logging to a file."""

    launch_env: dict[str, str]
    log: Callable[[str], None] = print
    stop_requested: list = field(default_factory=list)

    def environment(self, **paths) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if inherited(key)}
        env = {**self.launch_env, **env}
        env.update({key: str(value) for key, value in paths.items() if value is not None})
        return env

    def settings(self) -> dict[str, str]:
        """The launch settings every run gets (recorded with each run: a change is an error)."""
        env = self.environment()
        return {key: env[key] for key in LAUNCH_SETTINGS if key in env}

    def __call__(self, script: str, flags: list[str], log_path: Path, **paths) -> float:
        """Run scripts/<script> to the end; returns its wall time. StudyStopped when it fails or
        was stopped by a signal (its ranks save a checkpoint first)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(log_path, "a") as log_file:
            log_file.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} bash scripts/{script} {' '.join(flags)}\n")
            log_file.flush()
            process = subprocess.Popen(["bash", str(SCRIPTS / script), *flags], cwd=ROOT, stdout=log_file,
                                       stderr=subprocess.STDOUT, env=self.environment(**paths))
            code = _wait(process, self.stop_requested)
        wall = time.time() - start
        if code != 0:
            tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
            why = (f"stopped by {signal.Signals(code - 128).name}" if 128 < code < 160
                   else f"failed with exit code {code}")
            raise StudyStopped(f"{script} {why} after {wall:.0f} s; log: {log_path}\n{tail}\n"
                               "Run the same command again to resume: finished runs are kept, an interrupted one "
                               "continues from its last checkpoint.", code if code > 0 else 1, wall)
        return wall


    def output(self, script: str, flags: list[str], **paths) -> str:
        """What scripts/<script> prints, for a short command (a dry run); StudyStopped when it fails."""
        result = subprocess.run(["bash", str(SCRIPTS / script), *flags], cwd=ROOT, capture_output=True, text=True,
                                env=self.environment(**paths))
        if result.returncode != 0:
            raise StudyStopped(f"bash scripts/{script} {' '.join(flags)} failed with exit code "
                               f"{result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}", 2)
        return result.stdout


def _wait(process: subprocess.Popen, stop_requested: list) -> int:
    """Wait for the launch, also through SIGINT/SIGTERM. A cluster signals every process of the
    job (Ctrl-C the whole foreground group): torchrun passes it to the ranks, which save and stop,
    and leaving first would orphan them. A signal to this process alone is noted: the current
    launch finishes and the study stops before the next one."""
    def note(signum, _frame):
        stop_requested.append(signum)

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return process.wait()  # Python retries it after each handled signal (PEP 475)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- data and stage 1 -------------------------------------------------------------------------

def prepare_inputs(grid: Grid, out: Path, launcher: Launcher, stage1_override: Optional[str] = None) -> Inputs:
    """The data (ShapesVQA when the grid says synth) and the stage-1 checkpoint (trained once with
    scripts/pretrain.sh when the grid names bases instead of a checkpoint)."""
    from ..model import RECIPE_FILE, Recipe

    data = grid.data
    if "synth" in data:
        data_dir = _synth(dict(data["synth"] or {}), out / "data", launcher.log)
        data_path, image_folder, data_root = data_dir / "instruct.json", data_dir / "images", data_dir
        stage1_data = (data_dir / "pretrain.json", data_dir / "images")
    else:
        if not data.get("data_path"):
            raise GridError(f"{grid.path}: data: needs `synth:` or `data_path:` (and `image_folder:`)")
        data_path, image_folder = grid.resolve(data["data_path"]), grid.resolve(data.get("image_folder"))
        data_root = grid.resolve(data.get("data_root"))
        stage1_data = (grid.resolve(grid.stage1.get("data_path")), grid.resolve(grid.stage1.get("image_folder")))
    checkpoint = Path(stage1_override).resolve() if stage1_override else grid.resolve(grid.stage1.get("checkpoint"))
    if checkpoint is None:
        checkpoint = _train_stage1(grid, out / "stage1", stage1_data, launcher)
    if not (checkpoint.is_dir() or checkpoint.is_file()):
        raise GridError(f"stage-1 checkpoint not found: {checkpoint}")
    # MODEL (the grid's launch: or the environment) wins: it may point at moved base weights
    llm = (launcher.settings().get("MODEL")
           or (Recipe.load(checkpoint).language_model if (checkpoint / RECIPE_FILE).is_file()
               else str(checkpoint) if checkpoint.is_dir() else None))  # a whole LLaVA (llava-hf)
    if not llm:
        raise GridError(f"{checkpoint} is a projector file: set MODEL (in the grid's launch: or the environment) "
                        "to the language model it was trained with")
    return Inputs(checkpoint, data_path, image_folder, data_root, llm)


def _synth(settings: dict, data_dir: Path, log) -> Path:
    from ..demo.synth import write_shapesvqa

    marker = data_dir / "synth.json"
    if marker.is_file():
        made = json.loads(marker.read_text())
        if made != settings:
            raise GridError(f"{data_dir} was made with other synth settings ({made}); the grid asks for "
                            f"{settings}. Use another --out, or remove {data_dir}.")
        return data_dir
    log(f"ShapesVQA {settings} -> {data_dir}")
    counts = write_shapesvqa(data_dir, progress=False, **settings)
    log(f"  written: {counts}")
    marker.write_text(json.dumps(settings, indent=2) + "\n")
    return data_dir


def _train_stage1(grid: Grid, out: Path, data: tuple, launcher: Launcher) -> Path:
    spec = grid.stage1
    made_with = {"bases": str(grid.resolve(spec.get("bases"))), "env": spec.get("env"), "flags": spec.get("flags"),
                 "data": [str(d) for d in data], "launch": launcher.settings()}
    marker = out.parent / "stage1.json"
    if (out / METRICS_FILE).is_file():
        made = json.loads(marker.read_text()) if marker.is_file() else None
        if made != made_with:
            raise GridError(f"{out} was trained with other stage-1 settings ({made}) than the grid gives now "
                            f"({made_with}); use another --out, or remove {out} and {marker}")
        return out
    bases = grid.resolve(spec.get("bases"))
    if bases is None or data[0] is None:
        raise GridError(f"{grid.path}: stage1: needs `checkpoint:` or `bases:` (with vision/ and llm/) and, "
                        "without synth data, `data_path:`/`image_folder:` for stage 1")
    flags = flag_list(spec.get("flags") or {})
    launcher.log(f"stage 1 (projector alignment) from {bases} -> {out}")
    env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
    wall = launcher("pretrain.sh", [*flags, "--resume_from_checkpoint", "auto"], out.parent / "stage1.log",
                    MODEL=bases / "llm", VISION_TOWER=bases / "vision", DATA_PATH=data[0], IMAGE_FOLDER=data[1],
                    OUTPUT_DIR=out, **env)
    _write(marker, made_with)
    launcher.log(f"  stage 1 done in {wall:.0f} s")
    return out


# --- stage-2 runs -----------------------------------------------------------------------------

def run_record(folder: Path) -> Optional[dict]:
    path = folder / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def check_record(run: Run, out: Path, inputs: Inputs, launcher: Launcher) -> Optional[dict]:
    """The run's run.json, if any, after checking it was made with what the study would use now."""
    folder = run.folder(out)
    record = run_record(folder)
    if record is None:
        return None
    made = {"flags": record["flags"], **record.get("inputs", {})}
    wanted = {"flags": list(run.flags), **inputs.record(launcher.settings())}
    changed = sorted(key for key in wanted if made.get(key) != wanted[key])
    if changed:
        details = "; ".join(f"{key}: then {made.get(key)}, now {wanted[key]}" for key in changed)
        raise GridError(f"{folder} was made with other {', '.join(changed)} than this study uses ({details}). "
                        f"Use another --out, or remove {folder} to train it again.")
    return record


def train_run(run: Run, out: Path, inputs: Inputs, launcher: Launcher) -> dict:
    """Train one run (or skip it when done); returns its run.json record."""
    folder = run.folder(out)
    record = check_record(run, out, inputs, launcher)
    if record is not None and record.get("done"):
        return record
    record = record or {"variant": run.variant, "lr": run.lr, "seed": run.seed, "flags": list(run.flags),
                        "inputs": inputs.record(launcher.settings()), "attempts": []}
    model = folder / "model"
    attempt = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "finished": False}
    record["attempts"].append(attempt)
    _write(folder / RUN_FILE, record)  # before the launch: even a SIGKILL leaves the attempt on record
    try:
        wall = launcher("finetune.sh", list(run.flags), folder / "train.log", STAGE1_DIR=inputs.stage1,
                        DATA_PATH=inputs.data_path, IMAGE_FOLDER=inputs.image_folder, OUTPUT_DIR=model)
    except StudyStopped as stop:
        attempt["wall_s"] = round(stop.wall_s or 0.0, 1)
        _write(folder / RUN_FILE, record)
        raise
    attempt.update(finished=True, wall_s=round(wall, 1))
    record["wall_s"] = round(sum(a.get("wall_s", 0) for a in record["attempts"]), 1)
    record["done"] = True
    for leftover in [*model.glob("checkpoint-*"), model / ".staging"]:  # only for resuming; the model is saved
        shutil.rmtree(leftover, ignore_errors=True)
    _write(folder / RUN_FILE, record)
    return record


def evaluate_run(run: Run, out: Path, split: str, benchmarks: str, inputs: Inputs, evaluation: dict):
    """Score a trained run on the test or validation benchmarks (once); returns its scores,
    labelled variant/seedN, as `abilities` reads them from the work dir."""
    from ..evaluation.abilities import read_result_dir
    from ..evaluation.batching import DEFAULT_BATCH_SIZE
    from ..evaluation.runner import evaluate_checkpoint, resolve_benchmarks

    work_dir = run.folder(out) / f"eval-{split}"
    label = f"{run.variant}/seed{run.seed}"
    if (work_dir / DONE_FILE).is_file():
        made = json.loads((work_dir / DONE_FILE).read_text()).get("benchmarks")
        if made != benchmarks:
            raise GridError(f"{work_dir} holds scores on {made}, the grid asks for {benchmarks}; remove {work_dir} "
                            "to evaluate again")
        return read_result_dir(work_dir, label)
    name = f"{run.variant}_lr{run.lr:g}_seed{run.seed}"
    start = time.time()
    progress = sys.stderr.isatty()
    if not progress:  # a log file: one line per evaluation, not a bar per weight file
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    outcomes = evaluate_checkpoint(run.folder(out) / "model", resolve_benchmarks(benchmarks), work_dir,
                                   backend=evaluation["backend"], judge=evaluation.get("judge"),
                                   root=str(inputs.data_root) if inputs.data_root else None, model_name=name,
                                   batch_size=evaluation.get("batch_size", DEFAULT_BATCH_SIZE),
                                   progress=progress, strict=True)
    failed = {name: o.detail for name, o in outcomes.items() if o.status != "scored"}
    if failed:
        raise GridError(f"evaluating {run.key} failed: {failed}")
    _free_memory()  # the next launch's rank 0 shares this process's GPU
    scores = read_result_dir(work_dir, label)
    missing = sorted(set(resolve_benchmarks(benchmarks)) - set(scores.benchmarks))
    if missing:
        raise GridError(f"no readable result file for {missing} in {work_dir} after evaluating "
                        f"{run.key}; see the evaluation's messages above")
    _write(work_dir / DONE_FILE, {"benchmarks": benchmarks, "wall_s": round(time.time() - start, 1)})
    return scores


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)
