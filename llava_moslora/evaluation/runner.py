"""`llava-moslora eval`: run benchmarks on one checkpoint and collect VLMEvalKit result files.

Backends: "vlmeval" (VLMEvalKit's build_dataset, infer_data_job and evaluate; official benchmarks,
torchrun data-parallel inference) and "builtin" (local VLMEvalKit-format MCQ / yes-no TSVs,
offline, same files and scores). "auto" picks vlmeval when it is importable.
Benchmarks are names or suites (eval/suites/NAME.txt, one benchmark per line).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from .vlm import model_class, vlmeval_available

SUITES_DIR = Path(__file__).resolve().parents[2] / "eval" / "suites"
MARKER = "checkpoint.json"  # records which checkpoint a work directory belongs to


def suites() -> dict[str, list[str]]:
    found = {}
    for path in sorted(SUITES_DIR.glob("*.txt")):
        lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        found[path.stem] = [line for line in lines if line]
    return found


def resolve_benchmarks(spec: str) -> list[str]:
    """"paper", "MME,POPE" or "shapes,MMStar" -> benchmark names, suites expanded, order kept."""
    known, names = suites(), []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        for name in known.get(part, [part]):
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError(f"no benchmarks in {spec!r}; suites: {', '.join(known) or 'none found'}")
    return names


def data_root(explicit: Optional[str]) -> Path:
    """Where local TSVs live: --data-root, else $LMUData, else ~/LMUData (VLMEvalKit's default)."""
    return Path(explicit or os.environ.get("LMUData") or Path.home() / "LMUData").resolve()


def claim_work_dir(work_dir: Path, model_path: Path) -> None:
    """One work directory per checkpoint: VLMEvalKit silently reuses predictions found there."""
    work_dir.mkdir(parents=True, exist_ok=True)
    marker = work_dir / MARKER
    if marker.is_file():
        owner = json.loads(marker.read_text()).get("model")
        if owner != str(model_path):
            raise ValueError(f"{work_dir} holds results of {owner}; VLMEvalKit would reuse its predictions "
                             f"for {model_path}. Use a distinct --work-dir per checkpoint.")
    marker.write_text(json.dumps({"model": str(model_path)}, indent=2) + "\n")


def choose_backend(backend: str) -> str:
    if backend == "auto":
        if vlmeval_available():
            return "vlmeval"
        print("[llava-moslora] vlmeval is not installed: using the builtin backend (local MCQ / yes-no TSVs)")
        return "builtin"
    if backend == "vlmeval" and not vlmeval_available():
        raise ValueError("--backend vlmeval needs VLMEvalKit: git clone https://github.com/open-compass/VLMEvalKit "
                           "&& pip install -e VLMEvalKit (see README, Evaluation)")
    return backend


def evaluate_checkpoint(model_path, benchmarks: list[str], work_dir, *, backend: str = "auto",
                        judge: str = "exact_matching", root: Optional[str] = None, model_name: Optional[str] = None,
                        device: Optional[str] = None, progress: bool = True) -> dict[str, dict[str, Path]]:
    """Evaluate one checkpoint on each benchmark; returns benchmark -> result files."""
    model_path, work_dir = Path(model_path).resolve(), Path(work_dir).resolve()
    if not model_path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {model_path}")
    backend, root = choose_backend(backend), data_root(root)
    model_name = model_name or model_path.name
    claim_work_dir(work_dir, model_path)
    if backend == "builtin":
        from .builtin import evaluate_tsv

        tsvs = {name: local_tsv(name, root, required=True) for name in benchmarks}
        model = model_class(False)(model_path, device=device)
        return {name: evaluate_tsv(model, tsv, work_dir, model_name, progress) for name, tsv in tsvs.items()}
    from .vlmeval_backend import run_vlmeval

    return run_vlmeval(model_path, benchmarks, work_dir, model_name, root, judge, device)


def local_tsv(name: str, root: Path, required: bool = False) -> Optional[Path]:
    path = root / f"{name}.tsv"
    if path.is_file():
        return path
    if required:
        raise FileNotFoundError(f"{path} not found: the builtin backend scores local VLMEvalKit-format TSVs only "
                                f"(set --data-root or $LMUData; official benchmarks need --backend vlmeval)")
    return None


def summary(results: dict[str, dict[str, Path]]) -> str:
    """Each benchmark's headline score on 0-100, read back the way `abilities` reads it."""
    from .abilities import read_result_file

    lines = [f"{'benchmark':<28}{'Overall':>10}  file"]
    for name, files in results.items():
        path = files.get("acc") or files.get("score")
        if path is None or not Path(path).is_file():
            lines.append(f"{name:<28}{'-':>10}  (no score file)")
            continue
        lines.append(f"{name:<28}{read_result_file(path, name).headline_score:>9.1f}%  {path}")
    return "\n".join(lines)


def add_arguments(parser, name: str = "eval") -> None:
    parser.add_argument("--model", required=True, help="stage checkpoint or merged directory")
    parser.add_argument("--benchmarks", required=True,
                        help=f"comma-separated benchmark names and/or suites ({', '.join(suites())})")
    parser.add_argument("--work-dir", "--work_dir", dest="work_dir", required=True,
                        help="result directory of THIS checkpoint (VLMEvalKit reuses predictions it finds)")
    parser.add_argument("--judge", default="exact_matching", help="VLMEvalKit judge (default needs no API key)")
    parser.add_argument("--backend", choices=["auto", "vlmeval", "builtin"], default="auto",
                        help="auto: vlmeval when installed, else builtin (local MCQ / yes-no TSVs)")
    parser.add_argument("--data-root", "--data_root", dest="data_root", default=None,
                        help="folder of local benchmark TSVs (default: $LMUData, else ~/LMUData)")
    parser.add_argument("--model-name", "--model_name", dest="model_name", default=None,
                        help="prefix of the result files (default: the checkpoint directory's name)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: CUDA when present)")


def run(args, name: str = "eval") -> int:
    try:
        results = evaluate_checkpoint(args.model, resolve_benchmarks(args.benchmarks), args.work_dir,
                                      backend=args.backend, judge=args.judge, root=args.data_root,
                                      model_name=args.model_name, device=args.device)
    except (FileNotFoundError, ValueError) as error:
        print(f"llava-moslora eval: {error}")
        return 2
    if results and os.environ.get("RANK", "0") == "0":
        print(summary(results))
    return 0

