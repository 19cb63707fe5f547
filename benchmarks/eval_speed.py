"""Evaluation speed: rows per second answered at batch N over one row at a time, same answers.

    bash scripts/quickstart.sh                       # makes runs/quickstart/stage2 and its held-out sets
    python benchmarks/eval_speed.py                  # batch 16 vs 1 on the quickstart checkpoint
    python benchmarks/eval_speed.py --model DIR --data-root DIR --benchmarks NAME,NAME --batch-sizes 1,4,16

Loads the checkpoint once, then for each benchmark answers every row with each batch size
(`builtin` backend's predict_tsv, into a fresh work directory each time; --repeats times, the
batch sizes taking turns, the fastest kept) and reports rows per second, the ratio to the first
batch size and whether every prediction equals its. Target: >= 4x at batch 16 on 2 CPU cores.
A ratio from one run; run it a few times for the spread.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 4.0


def compare_batch_sizes(model_path: str, root: Path, names: list[str], sizes: list[int], repeats: int = 3,
                        device=None, dtype: str = "auto") -> dict:
    """Rows per second of each batch size over all `names`, and whether every answer equals the
    first batch size's (`dtype` as eval's --dtype: auto is bf16 on GPUs that have it)."""
    import pandas as pd

    from llava_moslora.evaluation.benchmarks import tsv_type
    from llava_moslora.evaluation.builtin import predict_tsv
    from llava_moslora.evaluation.vlm import model_class

    kinds = {name: tsv_type(root / f"{name}.tsv") for name in names}
    model = model_class(False)(model_path, device=device, dtype=dtype, benchmark_kinds=kinds)
    rows_total, seconds, differing = 0, {size: 0.0 for size in sizes}, 0
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            tsv = root / f"{name}.tsv"
            reference, best = None, {size: float("inf") for size in sizes}
            for repeat in range(repeats):
                for size in sizes:
                    work = Path(scratch) / f"{name}-{size}-{repeat}"
                    start = time.perf_counter()
                    predictions = predict_tsv(lambda: model, tsv, work, "speed", progress=False, batch_size=size)
                    best[size] = min(best[size], time.perf_counter() - start)
                    answers = pd.read_excel(predictions)["prediction"].fillna("").astype(str).tolist()
                    reference = answers if reference is None else reference
                    differing += sum(a != b for a, b in zip(answers, reference))
            for size in sizes:
                seconds[size] += best[size]
            rows_total += len(reference)
    rates = {size: rows_total / seconds[size] for size in sizes}
    return {"rows": rows_total, "rows_per_second": rates, "seconds": seconds,
            "ratio": rates[sizes[-1]] / rates[sizes[0]], "differing_answers": differing,
            "dtype": str(model.answerer.model.dtype), "device": str(model.answerer.device)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/quickstart/stage2", help="stage checkpoint or merged directory")
    parser.add_argument("--data-root", default="runs/quickstart/data", help="folder of the benchmark TSVs")
    parser.add_argument("--benchmarks", default="ShapesVQA_MCQ,ShapesVQA_YN")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated; the first is the reference")
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=3, help="runs per batch size; the fastest counts")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    result = compare_batch_sizes(args.model, Path(args.data_root), names, sizes, args.repeats, args.device)
    base = result["rows_per_second"][sizes[0]]
    print(f"{args.model}: {result['rows']} rows of {', '.join(names)}")
    for size in sizes:
        rate = result["rows_per_second"][size]
        print(f"  batch {size:>3}: {rate:7.1f} rows/s  ({result['seconds'][size]:.1f} s)  x{rate / base:.2f}")
    same = result["differing_answers"] == 0
    print(f"ratio batch {sizes[-1]} / batch {sizes[0]}: {result['ratio']:.2f} (target >= {TARGET_RATIO}); "
          f"predictions identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
