"""What a finished stage says about itself, in train_metrics.json: steps, batch, tokens per second,
peak memory, trainable parameters and a fingerprint of the data order.

The data order is a hash chain over the sample ids of every micro-batch each rank trained on,
kept in each checkpoint-N so that a resumed run ends with the fingerprint of an uninterrupted
one. Two runs with the same fingerprint saw the same samples in the same batches on the same
ranks: what a fair comparison of adapters needs (llava-moslora study checks it).
"""
from __future__ import annotations

import hashlib
import json
import resource
from pathlib import Path
from typing import Optional

import torch
from transformers import TrainerCallback

METRICS_FILE = "train_metrics.json"
RECORD_FILE = "run_record_rank{rank}.json"  # inside checkpoint-N, one per rank


class RunRecord:
    """One rank's running record: tokens trained on (non-padding), tokens processed (padding
    included) and the data-order chain."""

    def __init__(self) -> None:
        self.order = ""
        self.tokens_before = self.processed_before = 0  # restored from a checkpoint
        # this process's, counted by the collator (no device sync)
        self.tokens_this_process = self.processed_this_process = 0

    def update(self, sample_ids: list, real: int, processed: int) -> None:
        text = self.order + "|" + "\x1f".join(str(i) for i in sample_ids)
        self.order = hashlib.sha256(text.encode()).hexdigest()
        self.tokens_this_process += int(real)
        self.processed_this_process += int(processed)

    def save(self, checkpoint_dir: Path, rank: int) -> None:
        state = {"order": self.order, "tokens": self.tokens_before + self.tokens_this_process,
                 "processed": self.processed_before + self.processed_this_process}
        (Path(checkpoint_dir) / RECORD_FILE.format(rank=rank)).write_text(json.dumps(state) + "\n")

    def load(self, checkpoint_dir: Path, rank: int) -> None:
        path = Path(checkpoint_dir) / RECORD_FILE.format(rank=rank)
        if path.is_file():
            state = json.loads(path.read_text())
            self.order, self.tokens_before = state["order"], int(state["tokens"])
            self.processed_before = int(state.get("processed", state["tokens"]))  # older records: no padding known
        else:  # a checkpoint from before records were kept: the fingerprint covers only this part
            self.order = "incomplete:" + self.order


PROC_STATUS, PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def reset_peak_memory() -> None:
    """Measure the peak from now on (training), not from the start: on the CPU, loading makes
    copies of the weights (from_pretrained, embedding resize, ZeRO partitioning) that are freed
    before step 1. Linux resets the RSS high-water mark through /proc/self/clear_refs ("5")."""
    if _cuda():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        PROC_CLEAR_REFS.write_text("5")
    except OSError:  # not Linux, or not allowed: the lifetime peak is reported instead
        pass


def peak_memory() -> tuple[int, str]:
    """This process's peak memory in bytes since reset_peak_memory, and what was measured."""
    if _cuda():
        return int(torch.cuda.max_memory_allocated()), "cuda max allocated during training"
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "cpu peak rss during training"
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu max rss"  # Linux: KiB


class PeakMemoryOfTraining(TrainerCallback):
    """When training begins (the model, DeepSpeed's engine and the optimizer set up), keeps the
    peak of start-up and resets the measure for training's own."""

    def __init__(self) -> None:
        self.startup: Optional[int] = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.startup = peak_memory()[0]
        reset_peak_memory()


def run_metrics(record: RunRecord, args, state, train_runtime: float, trainable: dict[str, int],
                resumed_from: Optional[str], startup_memory: Optional[int] = None) -> dict:
    """The metrics of this run, gathered over ranks (collective)."""
    from .screen import gather_lists

    memory, measure = peak_memory()
    ranks = gather_lists([{"order": record.order, "tokens": record.tokens_this_process,
                            "tokens_before": record.tokens_before, "processed": record.processed_this_process,
                            "processed_before": record.processed_before, "memory": memory, "startup": startup_memory}])
    tokens = sum(r["tokens"] for r in ranks)
    all_tokens = tokens + sum(r["tokens_before"] for r in ranks)
    processed = sum(r["processed"] + r["processed_before"] for r in ranks)
    return {
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "world_size": args.world_size,
        "global_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "train_runtime_s": round(train_runtime, 3),
        "tokens": all_tokens,
        # positions the model ran, padding included, and how many per real token (1.0: no padding)
        "processed_tokens": processed,
        "processed_per_real_token": round(processed / all_tokens, 4) if all_tokens else None,
        "tokens_per_second": round(tokens / train_runtime, 1) if train_runtime > 0 else None,
        "peak_memory_bytes": max(r["memory"] for r in ranks),
        "peak_memory_measure": f"{measure}, highest rank",
        # building the model and DeepSpeed's engine, before step 1 (ZeRO-3 builds it partitioned)
        "startup_peak_memory_bytes_by_rank": [r["startup"] for r in ranks],
        "trainable_parameters": sum(trainable.values()),
        "trainable_by_component": trainable,
        "data_order": hashlib.sha256("/".join(r["order"] for r in ranks).encode()).hexdigest(),
        "resumed_from": resumed_from,
    }


def write_metrics(output_dir, metrics: dict) -> Path:
    path = Path(output_dir) / METRICS_FILE
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path
