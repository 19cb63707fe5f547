"""The index an evaluation work directory keeps of what it scored: results.json, benchmark ->
its kind and result files, with the checkpoint and the model name the files are named after.

`llava-moslora eval` writes it after each benchmark; `abilities` and the study read it, so a
benchmark is known by the name it was run under, whatever that name is. File names are parsed
only in directories this project did not write (VLMEvalKit's run.py output, copies).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

INDEX = "results.json"


def record_benchmark(work_dir: Path, model: Path, model_name: str, benchmark: str, kind: str,
                     files: Mapping[str, Path]) -> Path:
    """Add (or replace) one benchmark's entry; paths are stored relative to the work directory."""
    path = Path(work_dir) / INDEX
    index = read_index_file(path) if path.is_file() else {}
    if index.get("model_name") not in (None, model_name):  # another prefix: the old entries name other files
        index = {}
    index.update(model=str(model), model_name=model_name)
    index.setdefault("benchmarks", {})[benchmark] = {
        "kind": kind, "files": {role: os.path.relpath(Path(file), work_dir) for role, file in files.items()}}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def read_index_file(path: Path) -> dict:
    try:
        index = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) and isinstance(index.get("benchmarks", {}), dict) else {}


def indexed_results(result_dir: Path) -> dict[Path, str]:
    """Every result file (_acc.csv / _score.csv) the indexes under `result_dir` list, resolved,
    -> the benchmark it belongs to."""
    found: dict[Path, str] = {}
    for path in sorted(Path(result_dir).rglob(INDEX)):
        for benchmark, entry in read_index_file(path).get("benchmarks", {}).items():
            for role in ("acc", "score"):
                relative = (entry.get("files") or {}).get(role) if isinstance(entry, dict) else None
                if relative and (path.parent / relative).is_file():
                    found[(path.parent / relative).resolve()] = benchmark
    return found
