"""Training's start-up screen of the dataset: validate-data's rules, before step 1.

Each rank checks its share of the samples and the findings are gathered, so every rank reaches
the same verdict. By default any error stops the run here, naming the samples; with
--skip_bad_samples the bad samples are dropped, listed in OUTPUT_DIR/skipped_samples.jsonl
and counted. Images are checked by their header only (see SampleChecker); one corrupt past its
header is met when drawn: an error naming it by default, a skipped sample with the flag.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..data import LlavaDataset
from ..data.records import DataError
from ..data.validate import Finding, all_findings, check_samples

SKIPPED_FILE = "skipped_samples.jsonl"
SHOW = 10


def gather_lists(items: list) -> list:
    """Every rank's list, concatenated in rank order (collective: all ranks call it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, list(items))
    return [item for part in everyone for item in part]


def check_shard(dataset: LlavaDataset, rank: int, world_size: int, progress: bool = True) -> list[Finding]:
    """This rank's share of the per-sample checks (every world_size-th sample from `rank`); each
    finding's `index` is its sample's position in the dataset."""
    shard = dataset.samples[rank::world_size]
    found = check_samples(shard, dataset.checker("header"), progress=progress,
                          description=f"checking data ({len(shard)} of {len(dataset.samples)} samples on this rank)")
    return [replace(f, index=f.index * world_size + rank) for f in found]  # shard position -> dataset position


def screen_dataset(dataset: LlavaDataset, *, skip: bool, rank: int, world_size: int, output_dir: str) -> list[Finding]:
    """Check every sample of `dataset`; raise DataError on errors, or (skip) drop those samples.
    Returns the findings (errors and warnings) for the run's summary."""
    found = check_shard(dataset, rank, world_size, progress=rank == 0)
    checked = sorted(gather_lists(found), key=lambda f: f.index)
    findings = all_findings(dataset.rejected, dataset.samples, checked, dataset.part_of)
    errors = [f for f in findings if f.is_error]
    if errors and not skip:
        listed = "\n".join(f"  {f.kind} {f.sample_id!r}: {f.message}" if f.index is not None else f"  {f.kind}: {f.message}"
                           for f in errors[:SHOW])
        more = f"\n  ... and {len(errors) - SHOW} more" if len(errors) > SHOW else ""
        raise DataError(f"{len(errors)} bad samples in {dataset.data_path}, found before step 1:\n{listed}{more}\n"
                        "Run `llava-moslora validate-data` for the full report (and --write-clean for a clean "
                        "copy), or train with --skip_bad_samples to leave them out.")
    if errors:
        dataset.exclude(f.index for f in errors if f.index is not None)
        if rank == 0:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(output_dir) / SKIPPED_FILE, "w", encoding="utf-8") as handle:
                for f in errors:
                    handle.write(json.dumps({"kind": f.kind, "sample_id": f.sample_id, "where": f.where,
                                             "message": f.message, "when": "start"}) + "\n")
            ids = [f.sample_id if f.sample_id is not None else f.where for f in errors[:SHOW]]
            print(f"[llava-moslora] --skip_bad_samples: leaving out {len(errors)} bad samples "
                  f"(e.g. {ids}; all in {Path(output_dir) / SKIPPED_FILE})", flush=True)
    return findings
