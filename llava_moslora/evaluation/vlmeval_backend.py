"""The vlmeval backend: VLMEvalKit's own dataset, inference and evaluation around our model class.

Local yes/no TSVs go through ImageYORNDataset: VLMEvalKit's build_dataset makes any unknown
non-MCQ TSV a free-form VQA set, which it cannot score. Under torchrun, VLMEvalKit splits the
rows across ranks (it needs the process group initialised) and rank 0 scores.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

import torch

from .benchmarks import local_tsv, tsv_type
from .plan import BenchmarkPlan, Located
from .toolkit import import_vlmeval_quietly, vlmeval_knows, vlmeval_type


def prepare(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    import_vlmeval_quietly()


@contextlib.contextmanager
def lmu_data(root: Path) -> Iterator[None]:
    """$LMUData set to the data root while VLMEvalKit runs (it reads it to find, download and
    unpack TSVs), and put back afterwards: nothing else in the process depends on it."""
    previous = os.environ.get("LMUData")
    os.environ["LMUData"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LMUData", None)
        else:
            os.environ["LMUData"] = previous


def locate(name: str, root: Path) -> Located | str:
    """One of VLMEvalKit's datasets (it downloads it), else a local TSV, else why neither."""
    if vlmeval_knows(name):
        return Located(vlmeval_type(name), "VLMEvalKit", official=True)
    tsv = local_tsv(name, root)
    if tsv is not None:
        return Located(tsv_type(tsv), str(tsv), official=False)
    return f"VLMEvalKit does not know {name!r} and there is no {root / (name + '.tsv')}"


def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group VLMEvalKit's inference expects."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return int(os.environ.get("RANK", "0")), world


def build_benchmark(plan: BenchmarkPlan):
    from vlmeval.dataset import build_dataset

    if plan.kind == "Y/N" and plan.source != "VLMEvalKit":
        from vlmeval.dataset.image_yorn import ImageYORNDataset

        return ImageYORNDataset(dataset=plan.name)
    dataset = build_dataset(plan.name)
    if dataset is None:
        raise FileNotFoundError(f"VLMEvalKit could not build {plan.name!r} (see its warnings above)")
    return dataset


def run_benchmark(get_model: Callable, plan: BenchmarkPlan, work_dir: Path, model_name: str,
                  mode: str, root: Path) -> dict[str, Path]:
    """Predict (mode infer / all; VLMEvalKit keeps answered rows) and score on rank 0 (eval / all),
    with VLMEvalKit reading its data from `root`."""
    from vlmeval.inference import infer_data_job
    from vlmeval.smp import get_pred_file_path

    rank, world = init_distributed()
    with lmu_data(root):
        dataset = build_benchmark(plan)
        predictions = Path(get_pred_file_path(str(work_dir), model_name, dataset.dataset_name))
        if mode != "eval":
            infer_data_job(get_model(), work_dir=str(work_dir), model_name=model_name, dataset=dataset)
        try:
            if rank == 0 and mode != "infer":
                if not predictions.is_file():
                    raise FileNotFoundError(f"no predictions at {predictions}; run with --mode infer or all first")
                dataset.evaluate(str(predictions), model=plan.judge, nproc=1)
        finally:
            if world > 1:
                torch.distributed.barrier()  # every rank waits for rank 0's scores, failed or not
    return collect_files(work_dir, model_name, dataset.dataset_name, predictions, plan.judge)


def collect_files(work_dir: Path, model_name: str, dataset_name: str, predictions: Path,
                  judge: str) -> dict[str, Path]:
    """The prediction file and the result files VLMEvalKit wrote: {model}_{dataset}_acc.csv or
    _score.csv, or with the judge's name in between for LLM-judged sets (MMVet, MathVista)."""
    files = {"predictions": predictions}
    for suffix in ("acc", "score"):
        for stem in (f"{model_name}_{dataset_name}", f"{model_name}_{dataset_name}_{judge}"):
            path = work_dir / f"{stem}_{suffix}.csv"
            if path.is_file() and suffix not in files:
                files[suffix] = path
    return files
