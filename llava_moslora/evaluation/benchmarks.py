"""Benchmarks before any model: suite names, where local TSVs live, and each benchmark's type.

A type is VLMEvalKit's: "MCQ" (option columns A, B, ...), "Y/N" (answers Yes / No) or "VQA"
(free-form answers). Official names get theirs from vlmeval (`vlmeval_type`); a local TSV gets
it from its columns (`tsv_type`). The evaluation passes the types it planned to the model class
(nothing is kept process-wide), so rows are phrased the way the scorer expects.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pandas as pd

from .toolkit import vlmeval_available, vlmeval_knows, vlmeval_type

SUITES_DIR = Path(__file__).resolve().parent / "suites"  # package data: found from a wheel install too


def suites() -> dict[str, list[str]]:
    found = {}
    for path in sorted(SUITES_DIR.glob("*.txt")):
        lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        found[path.stem] = [line for line in lines if line]
    return found


def resolve_benchmarks(spec: str) -> list[str]:
    """"moslora-paper", "MME,POPE" or "shapes,MMStar" -> benchmark names, suites expanded, order kept."""
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


def local_tsv(name: str, root: Path) -> Optional[Path]:
    path = Path(root) / f"{name}.tsv"
    return path if path.is_file() else None


def table_type(table: pd.DataFrame) -> str:
    """"MCQ" for option columns A and B, "Y/N" when every answer is Yes or No, else "VQA"."""
    if {"A", "B"} <= set(table.columns):
        return "MCQ"
    if "answer" in table and set(table["answer"].astype(str)) <= {"Yes", "No"}:
        return "Y/N"
    return "VQA"


def read_rows(path: Path) -> pd.DataFrame:
    """A benchmark TSV without its image column (the bulk of the file)."""
    columns = pd.read_csv(path, sep="\t", nrows=0).columns
    return pd.read_csv(path, sep="\t", usecols=[c for c in columns if c != "image"])


def unscorable(path: Path) -> Optional[str]:
    """Why exact matching cannot score a local TSV (no answer column), else None."""
    if "answer" not in pd.read_csv(path, sep="\t", nrows=0).columns:
        return f"{path} has no `answer` column to score against"
    return None


def tsv_type(path: Path) -> str:
    # Every answer is read: a yes/no set has to be yes/no throughout.
    return table_type(read_rows(path))


def benchmark_type(name: Optional[str], root: Optional[Path] = None) -> str:
    """The type of a benchmark nobody planned (VLMEvalKit's run.py asking our model class):
    vlmeval's for official names, else from its TSV in `root` (default: data_root's), else "VQA"
    (run.py calls every unknown name "MCQ", yes/no and free-form sets included)."""
    if name is None:
        return "VQA"
    if vlmeval_available() and vlmeval_knows(name):
        return vlmeval_type(name)
    tsv = local_tsv(name, root or data_root(None))
    return tsv_type(tsv) if tsv else "VQA"
