"""Answering benchmark rows in batches: the rows of one benchmark sorted by prompt length, cut
into batches, each answered by one batched greedy generation, answers handed back row by row as
each batch ends (so they can be saved as they come) and finally in the rows' own order.

Both backends use it: the builtin one on its TSVs, the vlmeval one on the prompts VLMEvalKit's
inference would build. A batch that does not fit in GPU memory is halved and tried again.
"""
from __future__ import annotations

from typing import Callable, Hashable, Optional, Sequence

DEFAULT_BATCH_SIZE = 16  # rows per generation; see docs/EVALUATION.md for why and what it gains


def check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"--batch-size must be a whole number >= 1, got {batch_size!r}")
    return batch_size


def answer_rows(model, rows: Sequence[tuple[Hashable, list]], dataset: Optional[str], batch_size: int,
                on_batch: Callable[[dict], None] = lambda answers: None, progress: bool = True,
                desc: Optional[str] = None) -> dict:
    """{row key: answer} for `rows` ((key, message) pairs, message as VLMEvalKit's generate takes
    it), answered `batch_size` at a time by `model.generate_batch`, shortest prompts first.
    `on_batch` gets each batch's answers as soon as they exist (for saving)."""
    import torch  # here, not at the top: `eval --help` imports this module
    from tqdm import tqdm

    check_batch_size(batch_size)
    answers: dict = {}
    if not rows:
        return answers
    lengths = [model.prompt_length(message, dataset) for _, message in rows]
    order = sorted(range(len(rows)), key=lambda i: (lengths[i], i))
    bar = tqdm(total=len(rows), desc=desc or dataset, unit="row", disable=not progress)
    done, size = 0, batch_size
    while done < len(order):
        chunk = [rows[i] for i in order[done:done + size]]
        try:
            replies = model.generate_batch([message for _, message in chunk], dataset)
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            replies = None
        # Not accelerate's find_executable_batch_size: it empties the cache inside its except block,
        # while the traceback still holds the failed batch's tensors, and restarts the whole call.
        if replies is None:  # out of memory: outside the except, whose traceback held the batch's tensors
            size = max(1, min(size, len(chunk)) // 2)  # the longest prompts come last: smaller batches for them
            torch.cuda.empty_cache()
            bar.write(f"[llava-moslora] out of GPU memory with {len(chunk)} rows: going on with batches of {size}")
            continue
        batch = {key: reply for (key, _), reply in zip(chunk, replies)}
        answers.update(batch)
        on_batch(batch)
        done += len(chunk)
        bar.update(len(chunk))
        bar.set_postfix(batch=size)  # the bar itself shows rows/s
    bar.close()
    return answers
