"""The vlmeval backend: VLMEvalKit's own dataset, inference and evaluation around our model class.

Local yes/no TSVs go through ImageYORNDataset: VLMEvalKit's build_dataset makes any unknown
non-MCQ TSV a free-form VQA set, which it cannot score; such a set is scored by the builtin
backend's normalized exact match instead. Under torchrun, VLMEvalKit splits the
rows across ranks (it needs the process group initialised) and rank 0 scores.

Inference is batched: each rank's rows get the prompts VLMEvalKit's infer_data would build
(dataset or model prompt, by its rules), are answered a batch at a time, and are saved after
every batch in the file infer_data keeps for that rank ({rank}{world}_{dataset}.pkl). Then
infer_data_job finds every row answered, generates nothing, and writes the prediction file
VLMEvalKit's evaluate (and run.py, which reuses it) reads.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

import torch

from .batching import DEFAULT_BATCH_SIZE, answer_rows
from .builtin import score_predictions
from .benchmarks import local_tsv, tsv_type
from .plan import BenchmarkPlan, Located
from .ranks import init_distributed
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


def build_benchmark(plan: BenchmarkPlan):
    from vlmeval.dataset import build_dataset

    if plan.kind == "Y/N" and plan.source != "VLMEvalKit":
        from vlmeval.dataset.image_yorn import ImageYORNDataset

        return ImageYORNDataset(dataset=plan.name)
    dataset = build_dataset(plan.name)
    if dataset is None:
        raise FileNotFoundError(f"VLMEvalKit could not build {plan.name!r} (see its warnings above)")
    return dataset


def vlmeval_message(model, dataset, line) -> list:
    """The prompt VLMEvalKit's infer_data builds for a row (the same rules, in the same order)."""
    if getattr(dataset, "force_use_dataset_prompt", False):
        return dataset.build_prompt(line)
    if model.use_custom_prompt(dataset.dataset_name):
        return model.build_prompt(line, dataset=dataset.dataset_name)
    return dataset.build_prompt(line)


def answer_in_batches(get_model: Callable, dataset, work_dir: Path, model_name: str, rank: int, world: int,
                      batch_size: int, progress: bool) -> None:
    """This rank's rows answered in batches into infer_data's file for the rank, saved after each
    batch; rows already in it or in an earlier prediction file (failed API answers aside, as
    infer_data_job does) are not asked again."""
    from vlmeval.inference import FAIL_MSG
    from vlmeval.smp import dump, get_pred_file_path, load

    name = dataset.dataset_name
    rank_file = work_dir / f"{rank}{world}_{name}.pkl"
    earlier = Path(get_pred_file_path(str(work_dir), model_name, name, use_env_format=True))
    done = {}
    if earlier.is_file():
        table = load(str(earlier))
        done = {k: v for k, v in zip(table["index"], table["prediction"]) if FAIL_MSG not in str(v)}
    if rank_file.is_file():
        done.update(load(str(rank_file)))
    rows = dataset.data.iloc[list(range(rank, len(dataset), world))]
    todo = rows[~rows["index"].isin(list(done))]
    if todo.empty:
        return
    model = get_model()
    model.set_dump_image(dataset.dump_image)
    messages = [(line["index"], vlmeval_message(model, dataset, line)) for _, line in todo.iterrows()]

    def save(batch: dict) -> None:
        done.update(batch)
        dump(done, str(rank_file))

    answer_rows(model, messages, name, batch_size, on_batch=save, progress=progress,
                desc=f"{name} (rank {rank}/{world})" if world > 1 else name)


def run_benchmark(get_model: Callable, plan: BenchmarkPlan, work_dir: Path, model_name: str,
                  mode: str, root: Path, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True) -> dict[str, Path]:
    """Predict (mode infer / all, in batches; answered rows are kept) and score on rank 0
    (eval / all), with VLMEvalKit reading its data from `root`."""
    from vlmeval.inference import infer_data_job
    from vlmeval.smp import get_pred_file_path

    rank, world = init_distributed()
    with lmu_data(root):
        dataset = build_benchmark(plan)
        predictions = Path(get_pred_file_path(str(work_dir), model_name, dataset.dataset_name))
        if mode != "eval":
            answer_in_batches(get_model, dataset, work_dir, model_name, rank, world, batch_size, progress)
            # every row is answered: infer_data_job builds no model and only gathers the ranks' files
            infer_data_job(get_model, work_dir=str(work_dir), model_name=model_name, dataset=dataset)
        try:
            if rank == 0 and mode != "infer":
                if not predictions.is_file():
                    raise FileNotFoundError(f"no predictions at {predictions}; run with --mode infer or all first")
                if plan.kind == "VQA" and plan.source != "VLMEvalKit":  # VLMEvalKit has no scorer for custom free-form sets
                    score_predictions(Path(plan.source), predictions, "VQA")
                else:
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
