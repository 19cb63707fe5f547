"""`llava-moslora eval`: run benchmarks on one checkpoint and collect VLMEvalKit result files.

Backends: "vlmeval" (VLMEvalKit's build_dataset, infer_data_job and evaluate; official benchmarks,
torchrun data-parallel inference, LLM judges) and "builtin" (local VLMEvalKit-format MCQ / yes-no
TSVs, offline, same files and scores). "auto" picks vlmeval when it is importable.

Order: resolve names and suites -> plan each benchmark's scoring (plan.py) and print it ->
(--strict: stop if any is skipped) -> load the model once, only if something needs inference ->
each benchmark on its own, a failure recorded and the rest carried on -> summary.
Modes as VLMEvalKit's: infer (predictions only), eval (score existing predictions), all.
"""
from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

from ..data.images import MAX_IMAGE_PIXELS, PIXELS_HELP, set_max_image_pixels
from ..names import BITS, BITS_HELP, TEMPLATE_HELP
from .benchmarks import data_root, resolve_benchmarks, suites
from .batching import DEFAULT_BATCH_SIZE, check_batch_size
from .plan import BenchmarkPlan, locate_local, make_plan, render_plan
from .ranks import init_distributed, rank_and_world
from .result_index import record_benchmark
from .toolkit import load_vlmeval_env, vlmeval_available

MARKER = "checkpoint.json"  # records which checkpoint a work directory belongs to
MODES = ("all", "infer", "eval")


class PlanRefused(ValueError):
    """--strict and a benchmark that would be skipped: nothing has run."""


@dataclass
class Outcome:
    """What happened to one benchmark: scored, predicted (--mode infer), skipped or failed."""

    name: str
    status: str
    detail: str = ""
    files: dict[str, Path] = field(default_factory=dict)


def claim_work_dir(work_dir: Path, model_path: Path, rank: int = 0) -> None:
    """One work directory per checkpoint: VLMEvalKit silently reuses predictions found there.
    Every rank checks; rank 0 writes the marker (whole, by a rename: the others may be reading)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    marker = work_dir / MARKER
    if marker.is_file():
        owner = json.loads(marker.read_text()).get("model")
        if owner != str(model_path):
            raise ValueError(f"{work_dir} holds results of {owner}; VLMEvalKit would reuse its predictions "
                             f"for {model_path}. Use a distinct --work-dir per checkpoint.")
    if rank == 0:
        written = marker.with_name(f".{MARKER}.{os.getpid()}")
        written.write_text(json.dumps({"model": str(model_path)}, indent=2) + "\n")
        os.replace(written, marker)


def choose_backend(backend: str) -> str:
    if backend == "auto":
        if vlmeval_available():
            return "vlmeval"
        print("[llava-moslora] vlmeval is not installed: using the builtin backend (local MCQ / yes-no TSVs)")
        return "builtin"
    if backend == "vlmeval" and not vlmeval_available():
        raise ValueError("--backend vlmeval needs VLMEvalKit: git clone https://github.com/open-compass/VLMEvalKit "
                         "&& pip install -e VLMEvalKit (see docs/EVALUATION.md)")
    return backend


def describe_error(error: BaseException) -> str:
    """The first line of an error, or where it was raised when it says nothing (VLMEvalKit's
    custom free-form sets raise a bare NotImplementedError from their evaluate)."""
    text = str(error).strip().splitlines()
    if text:
        return f"{type(error).__name__}: {text[0]}"
    frames = list(traceback.walk_tb(error.__traceback__))
    if not frames:
        return type(error).__name__
    frame, line = frames[-1]
    owner = frame.f_locals.get("self")
    function = f"{type(owner).__name__}.{frame.f_code.co_name}" if owner is not None else frame.f_code.co_name
    return f"{type(error).__name__} in {function} ({Path(frame.f_code.co_filename).name}:{line})"


def keep_traceback(error: BaseException, path: Path) -> Path:
    """Write the error's whole traceback to `path` (the one-line summary names that file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(traceback.format_exception(error)))
    return path


class ModelLoadError(RuntimeError):
    """The checkpoint could not be loaded: every benchmark would fail the same way."""


class LazyModel:
    """The model, loaded on first use: --mode eval and fully reused predictions load nothing. A
    failure to load says why in one line when the checkpoint itself is at fault (the project's
    own CheckpointError, a missing file); anything else keeps its traceback in `error_log`."""

    def __init__(self, load: Callable[[], object], what: Path, error_log: Path) -> None:
        self._load, self._model, self._what, self._error_log = load, None, what, error_log

    def __call__(self):
        if self._model is None:
            from ..model import CheckpointError

            try:
                self._model = self._load()
            except (CheckpointError, FileNotFoundError) as error:
                raise ModelLoadError(f"cannot load {self._what}: {error}") from error
            except Exception as error:
                log = keep_traceback(error, self._error_log)
                raise ModelLoadError(f"cannot load {self._what}: {describe_error(error)} (traceback: {log})") from error
        return self._model


def plan_checkpoint(benchmarks: list[str], backend: str, root: Path, judge: Optional[str]) -> list[BenchmarkPlan]:
    """Each benchmark's plan from what this machine has: its data, and the judge variables in
    the environment (for vlmeval, after reading VLMEvalKit's .env as its run.py does)."""
    if backend == "vlmeval":
        from . import vlmeval_backend

        vlmeval_backend.prepare(root)
        load_vlmeval_env()
        return make_plan(benchmarks, lambda name: vlmeval_backend.locate(name, root), judge, os.environ)
    return make_plan(benchmarks, lambda name: locate_local(name, root), judge, os.environ, llm_judges=False)


def evaluate_checkpoint(model_path, benchmarks: list[str], work_dir, *, backend: str = "auto",
                        judge: Optional[str] = None, root: Optional[str] = None, model_name: Optional[str] = None,
                        device: Optional[str] = None, dtype: str = "auto", bits: Optional[int] = None,
                        template: Optional[str] = None, batch_size: int = DEFAULT_BATCH_SIZE, mode: str = "all",
                        strict: bool = False, progress: bool = True,
                        log: Callable[[str], None] = print) -> dict[str, Outcome]:
    """Evaluate one checkpoint on each benchmark; returns benchmark -> Outcome. Raises PlanRefused
    (strict) or ValueError / FileNotFoundError for bad input before anything runs."""
    model_path, work_dir = Path(model_path).resolve(), Path(work_dir).resolve()
    if not model_path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {model_path}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    check_batch_size(batch_size)
    backend, root = choose_backend(backend), data_root(root)
    model_name = model_name or model_path.name
    plans = plan_checkpoint(benchmarks, backend, root, judge)
    rank, world = rank_and_world()
    if rank == 0:
        log(f"[llava-moslora] evaluation plan ({backend} backend, mode {mode}, batch size {batch_size}, "
            f"judge: {judge or 'per benchmark'}):\n"
            + render_plan(plans))
    skipped = [plan.name for plan in plans if not plan.runs]
    if skipped and strict:
        raise PlanRefused(f"--strict: {', '.join(skipped)} would be skipped (reasons above); nothing was run")
    rank, world = init_distributed()  # under torchrun: this rank's GPU, before the model is loaded
    claim_work_dir(work_dir, model_path, rank)
    of_rank = f".rank{rank}" if world > 1 else ""  # each rank's own error logs
    kinds = {plan.name: plan.kind for plan in plans if plan.kind}  # the model phrases rows for the scorer's type

    use_vlmeval = backend == "vlmeval"
    from .vlm import model_class

    model = LazyModel(lambda: model_class(use_vlmeval)(model_path, device=device, dtype=dtype, bits=bits,
                                                       template=template, benchmark_kinds=kinds, data_root=root),
                      model_path, work_dir / f"model{of_rank}.error.log")
    outcomes = {}
    for plan in plans:
        if not plan.runs:
            outcomes[plan.name] = Outcome(plan.name, "skipped", plan.skip)
            continue
        try:
            if use_vlmeval:
                from .vlmeval_backend import run_benchmark

                files = run_benchmark(model, plan, work_dir, model_name, mode, root, batch_size, progress)
            else:
                files = run_builtin(model, plan, work_dir, model_name, mode, progress, batch_size)
        except ModelLoadError:
            raise
        except Exception as error:  # noqa: BLE001 - one benchmark's failure must not stop the others
            traceback_file = keep_traceback(error, work_dir / f"{plan.name}{of_rank}.error.log")
            outcomes[plan.name] = Outcome(plan.name, "failed", f"{describe_error(error)} (traceback: {traceback_file})")
            log(f"[llava-moslora] {plan.name} failed: {describe_error(error)}; traceback: {traceback_file}")
            continue
        (work_dir / f"{plan.name}{of_rank}.error.log").unlink(missing_ok=True)  # an earlier failure, fixed since
        status = "predicted" if mode == "infer" else "scored"
        if status == "scored" and rank == 0:
            record_benchmark(work_dir, model_path, model_name, plan.name, plan.kind, files)
        outcomes[plan.name] = Outcome(plan.name, status, str(files.get("acc") or files.get("score")
                                                          or files.get("predictions", "")), files)
    return outcomes


def run_builtin(model: LazyModel, plan: BenchmarkPlan, work_dir: Path, model_name: str, mode: str,
                progress: bool, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Path]:
    from .builtin import predict_tsv, prediction_file, score_predictions

    tsv = Path(plan.source)
    predictions = prediction_file(work_dir, model_name, plan.name)
    if mode != "eval":
        predictions = predict_tsv(model, tsv, work_dir, model_name, progress, batch_size)
    if mode == "infer" or rank_and_world()[0] != 0:  # rank 0 scores (and reports)
        return {"predictions": predictions}
    if not predictions.is_file():
        raise FileNotFoundError(f"no predictions at {predictions}; run with --mode infer or all first")
    return score_predictions(tsv, predictions, plan.kind)


def summary(outcomes: Mapping[str, Outcome], batch_size: Optional[int] = None) -> str:
    """Each benchmark's status; headline score on 0-100 (read back the way `abilities` reads it);
    the batch size the answers were generated with."""
    from .abilities import read_result_file

    width = max([len(name) for name in outcomes] + [9]) + 2
    lines = [f"{'benchmark':<{width}}{'status':<11}{'Overall':>8}  file / reason"]
    for name, outcome in outcomes.items():
        score = "-"
        path = outcome.files.get("acc") or outcome.files.get("score")
        if outcome.status == "scored" and path is not None and Path(path).is_file():
            score = f"{read_result_file(path, name).headline_score:.1f}%"
        lines.append(f"{name:<{width}}{outcome.status:<11}{score:>8}  {outcome.detail}")
    counts = {status: sum(o.status == status for o in outcomes.values())
              for status in ("scored", "predicted", "skipped", "failed")}
    lines.append(", ".join(f"{count} {status}" for status, count in counts.items() if count)
                 + (f" (batch size {batch_size})" if batch_size else ""))
    return "\n".join(lines)


def exit_code(outcomes: Mapping[str, Outcome], strict: bool) -> int:
    """0 when something was scored or predicted and (with --strict) nothing failed; else 1."""
    statuses = [outcome.status for outcome in outcomes.values()]
    if strict and any(status not in ("scored", "predicted") for status in statuses):
        return 1
    return 0 if any(status in ("scored", "predicted") for status in statuses) else 1


def add_arguments(parser, name: str = "eval") -> None:
    parser.add_argument("--model", required=True, help="stage checkpoint or merged directory")
    parser.add_argument("--benchmarks", required=True,
                        help=f"comma-separated benchmark names and/or suites ({', '.join(suites())})")
    parser.add_argument("--work-dir", "--work_dir", dest="work_dir", required=True,
                        help="result directory of THIS checkpoint (VLMEvalKit reuses predictions it finds)")
    parser.add_argument("--judge", default=None,
                        help="judge for every benchmark (default: VLMEvalKit run.py's choice per benchmark: exact "
                             "matching for MCQ / yes-no, an LLM judge where required, which needs OPENAI_API_KEY)")
    parser.add_argument("--mode", choices=MODES, default="all",
                        help="as VLMEvalKit's: infer = predictions only, eval = score existing predictions, all")
    parser.add_argument("--strict", action="store_true",
                        help="stop at start if any benchmark would be skipped; exit 1 if any fails")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="weights dtype (auto: bf16 on GPUs that support it, fp32 on CPU)")
    parser.add_argument("--bits", type=int, default=None, choices=BITS, help=BITS_HELP)
    parser.add_argument("--backend", choices=["auto", "vlmeval", "builtin"], default="auto",
                        help="auto: vlmeval when installed, else builtin (local MCQ / yes-no TSVs)")
    parser.add_argument("--data-root", "--data_root", dest="data_root", default=None,
                        help="folder of local benchmark TSVs (default: $LMUData, else ~/LMUData)")
    parser.add_argument("--model-name", "--model_name", dest="model_name", default=None,
                        help="prefix of the result files (default: the checkpoint directory's name)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: CUDA when present)")
    parser.add_argument("--max_image_pixels", "--max-image-pixels", dest="max_image_pixels", type=int,
                        default=MAX_IMAGE_PIXELS, help=PIXELS_HELP)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="rows answered per generation, prompts of like length together; the answers equal "
                             "one-at-a-time ones (on a GPU, a batch out of memory is halved and retried) "
                             "(default: %(default)s)")
    parser.add_argument("--template", default=None, help=TEMPLATE_HELP)


def run(args, name: str = "eval") -> int:
    set_max_image_pixels(args.max_image_pixels)
    try:
        outcomes = evaluate_checkpoint(args.model, resolve_benchmarks(args.benchmarks), args.work_dir,
                                       backend=args.backend, judge=args.judge, root=args.data_root,
                                       model_name=args.model_name, device=args.device, dtype=args.dtype, bits=args.bits,
                                       template=args.template, batch_size=args.batch_size, mode=args.mode,
                                       strict=args.strict)
    except (FileNotFoundError, ValueError, ModelLoadError) as error:
        print(f"llava-moslora eval: {error}")
        return 2
    if rank_and_world()[0] == 0:
        print(summary(outcomes, args.batch_size))
    return exit_code(outcomes, args.strict)
