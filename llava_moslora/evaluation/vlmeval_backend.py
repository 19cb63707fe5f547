"""The vlmeval backend: VLMEvalKit's own dataset, inference and evaluation around our model class.

Local yes/no TSVs go through ImageYORNDataset: VLMEvalKit's build_dataset makes any unknown
non-MCQ TSV a free-form VQA set, which it cannot score. Under torchrun, VLMEvalKit splits the
rows across ranks (it needs the process group initialised) and rank 0 scores.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pandas as pd
import torch

from .builtin import benchmark_kind
from .runner import local_tsv
from .vlm import LOCAL_TYPES, import_vlmeval_quietly, model_class


def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group VLMEvalKit's inference expects."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return int(os.environ.get("RANK", "0")), world


def build_benchmark(name: str, root: Path):
    from vlmeval.dataset import build_dataset

    tsv = local_tsv(name, root)
    if tsv is not None:
        kind = benchmark_kind(pd.read_csv(tsv, sep="\t", nrows=50))
        LOCAL_TYPES[name] = kind
        if kind == "Y/N":
            from vlmeval.dataset.image_yorn import ImageYORNDataset

            return ImageYORNDataset(dataset=name)
    dataset = build_dataset(name)
    if dataset is None:
        raise FileNotFoundError(f"VLMEvalKit does not know {name!r} and {root / (name + '.tsv')} does not exist")
    return dataset


def run_vlmeval(model_path: Path, benchmarks: list[str], work_dir: Path, model_name: str, root: Path,
                judge: str, device: Optional[str]) -> dict[str, dict[str, Path]]:
    os.environ["LMUData"] = str(root)  # read by vlmeval when it looks for (and unpacks) TSVs
    root.mkdir(parents=True, exist_ok=True)
    import_vlmeval_quietly()
    from vlmeval.inference import infer_data_job
    from vlmeval.smp import get_pred_file_path

    rank, world = init_distributed()
    if device is None and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    model = model_class(True)(model_path, device=device)
    results = {}
    for name in benchmarks:
        dataset = build_benchmark(name, root)
        infer_data_job(model, work_dir=str(work_dir), model_name=model_name, dataset=dataset)
        predictions = Path(get_pred_file_path(str(work_dir), model_name, dataset.dataset_name))
        if rank == 0:
            dataset.evaluate(str(predictions), model=judge, nproc=1)
        if world > 1:
            torch.distributed.barrier()
        results[name] = collect_files(work_dir, model_name, dataset.dataset_name, predictions)
    return results


def collect_files(work_dir: Path, model_name: str, dataset_name: str, predictions: Path) -> dict[str, Path]:
    files = {"predictions": predictions}
    for suffix in ("acc", "score"):
        path = work_dir / f"{model_name}_{dataset_name}_{suffix}.csv"
        if path.is_file():
            files[suffix] = path
    return files
