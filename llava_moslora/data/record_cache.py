"""Large LLaVA data files as a memory-mapped Arrow cache, so that every rank does not hold them.

Parsing llava_v1_5_mix665k.json (1 GB) into Python objects costs each rank about 3 GB and 30 s.
Instead the first process to open a big file (MMAP_MIN_BYTES or more) parses and checks it once,
with the very parse_sample of records.py, and writes the normalised samples and the rejected
records (their DataErrors, in file order) to an Arrow IPC file in the cache directory; every
process then memory-maps that file. The file is keyed on the data path as given, each file's
absolute path, size and modification time, so an edited data file is parsed again. Processes
that start together wait on a lock for the one that converts. The cache lives under
$LLAVA_MOSLORA_CACHE, else $XDG_CACHE_HOME/llava-moslora, else ~/.cache/llava-moslora (records/);
delete it freely.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from bisect import bisect_right
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from .records import DataError, Sample, data_paths, is_file_image, iter_records, jsonl_line, load_samples, parse_sample
from .tables import is_table_source

MMAP_MIN_BYTES = 64 << 20  # smaller data is parsed in memory (records.load_samples)
CACHE_VERSION = 2  # 2: a list of images per sample
READ_CHUNK = 16 << 20  # characters read at a time while converting
BATCH = 4096  # samples per Arrow record batch
_SPACE = re.compile(r"[ \t\n\r]*")


def cache_dir() -> Path:
    root = os.environ.get("LLAVA_MOSLORA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llava-moslora"
    return Path(root) / "records"


def wants_cache(path: Union[str, Path]) -> bool:
    """Whether `path` (one file, or "a.json,b.jsonl") is files big enough for the cache."""
    files = [Path(p) for p in data_paths(path)]
    return (all(f.is_file() and not is_table_source(f) for f in files)  # tables map themselves
            and sum(f.stat().st_size for f in files) >= MMAP_MIN_BYTES)


def cache_file(path: Union[str, Path]) -> Path:
    key = [CACHE_VERSION, str(path)]
    for one in data_paths(path):
        stat = Path(one).stat()
        key.append([str(Path(one).resolve()), stat.st_size, stat.st_mtime_ns])
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]
    return cache_dir() / f"{Path(data_paths(path)[0]).stem}-{digest}.arrow"


def open_samples(path: Union[str, Path], rejected: Optional[list[DataError]] = None) -> Sequence[Sample]:
    """load_samples's samples and errors; a big JSON/JSONL file comes memory-mapped (a
    record_cache.SampleTable) rather than as a list, parsed once and shared by every process."""
    if not wants_cache(path):
        return load_samples(path, rejected)
    samples, errors = open_cached(path)
    if errors and rejected is None:
        raise errors[0]
    if rejected is not None:
        rejected.extend(errors)
    return samples


def open_cached(path: Union[str, Path]) -> tuple["SampleTable", list[DataError]]:
    """The samples of `path` (memory-mapped) and its rejected records, converting it if needed."""
    target = cache_file(path)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # ranks that start together: one converts, the rest wait
            if not target.exists():
                _convert(path, target)
    table = SampleTable(target)
    errors = [DataError(message, kind, sample_id, where) for message, kind, sample_id, where in table.rejected]
    return table, errors


def _iter_file(path: Path, on_malformed) -> Iterator[tuple[dict, str]]:
    """iter_records's (record, where) pairs, read a chunk at a time rather than all at once. On a
    malformed JSON list it defers to iter_records, so the error is the one it raises."""
    with path.open(encoding="utf-8") as handle:
        head = handle.read(READ_CHUNK)
        while head and not head.strip() and len(head) % READ_CHUNK == 0:
            head += handle.read(READ_CHUNK)
        if head.lstrip().startswith("["):
            done = 0
            try:
                for record in _json_list(handle, head):
                    yield record, f"{path} (item {done})"
                    done += 1
                return
            except (ValueError, _Malformed):
                pass
            # what json.loads makes of the whole file: its error, or (if the chunked reading
            # were ever stricter than it) the records after those already given
            for index, pair in enumerate(iter_records(path, on_malformed)):
                if index >= done:
                    yield pair
            return
        else:
            number, carry = 0, head
            while True:
                more = handle.read(READ_CHUNK)
                lines = carry.splitlines() if not more else (carry + more).splitlines(keepends=True)
                carry = lines.pop() if more and lines else ""
                for line in lines:
                    number += 1
                    yield from jsonl_line(path, (line.splitlines() or [""])[0] if more else line, number, on_malformed)
                if not more:
                    return


class _Malformed(Exception):
    pass


def _json_list(handle, buffer: str) -> Iterator:
    """The elements of the JSON list that starts in `buffer` and continues in `handle`."""
    decoder, position, eof, state = json.JSONDecoder(), buffer.index("[") + 1, False, "first"
    if _SPACE.match(buffer).end() != position - 1:
        raise _Malformed("not JSON whitespace before the list")

    def refill() -> bool:
        nonlocal buffer, position, eof
        more = "" if eof else handle.read(READ_CHUNK)
        eof = not more
        buffer, position = buffer[position:] + more, 0
        return bool(more)

    while True:
        position = _SPACE.match(buffer, position).end()
        if position == len(buffer):
            if refill():
                continue
            raise _Malformed("unterminated list")
        char = buffer[position]
        if char == "]" and state in ("first", "value"):
            position += 1
            while True:  # only whitespace may follow
                if _SPACE.match(buffer, position).end() != len(buffer):
                    raise _Malformed("data after the list")
                if not refill():
                    return
        if state == "value":
            if char != ",":
                raise _Malformed("expected a comma")
            position, state = position + 1, "comma"
            continue
        try:
            value, end = decoder.raw_decode(buffer, position)
        except json.JSONDecodeError:
            if refill():
                continue
            raise
        if (end == len(buffer) or buffer[end] not in " \t\n\r,]") and refill():
            continue  # a number may go on in the next chunk ("15" of "1500.0")
        yield value
        position, state = end, "value"
        if position > READ_CHUNK:
            buffer, position = buffer[position:], 0


def _convert(path: Union[str, Path], target: Path) -> None:
    import pyarrow as pa

    schema = pa.schema([("id", pa.string()), ("images", pa.list_(pa.string())), ("system", pa.string()),
                        ("questions", pa.list_(pa.string())), ("answers", pa.list_(pa.string())), ("length", pa.int64())])
    rejected: list[DataError] = []
    columns: dict[str, list] = {name: [] for name in schema.names}
    partial = target.with_suffix(f".partial-{os.getpid()}")
    try:
        with pa.OSFile(str(partial), "wb") as sink:
            writer = None

            def flush() -> None:
                nonlocal writer
                if writer is None:
                    writer = pa.ipc.new_file(sink, schema)
                writer.write_batch(pa.record_batch([pa.array(columns[name], schema.field(name).type)
                                                    for name in schema.names], schema=schema))
                for values in columns.values():
                    values.clear()

            for one in data_paths(path):
                for index, (record, where) in enumerate(_iter_file(Path(one), rejected.append)):
                    try:
                        sample = parse_sample(record, where, index)
                    except DataError as error:
                        rejected.append(error)
                        continue
                    for name, value in (("id", sample.id), ("images", list(sample.images)), ("system", sample.system),
                                        ("questions", [q for q, _ in sample.turns]),
                                        ("answers", [a for _, a in sample.turns]), ("length", sample.modality_length)):
                        columns[name].append(value)
                    if len(columns["id"]) == BATCH:
                        flush()
            flush()
            writer.close()
        errors = partial.with_suffix(".rejected-partial")
        errors.write_text(json.dumps([[str(e), e.kind, e.sample_id, e.where] for e in rejected]), encoding="utf-8")
        os.replace(errors, _rejected_file(target))  # before the table: a table that exists is complete
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _rejected_file(target: Path) -> Path:
    return target.with_suffix(".rejected.json")


class SampleTable:
    """A read-only sequence of Samples over the memory-mapped cache file, optionally a subset
    of its rows (`rows`, positions in the file) after slicing or exclude."""

    def __init__(self, file: Path, rows: Optional[np.ndarray] = None) -> None:
        import pyarrow as pa

        self.file = Path(file)
        reader = pa.ipc.open_file(pa.memory_map(str(self.file)))
        self._batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        self._starts = np.cumsum([0] + [len(b) for b in self._batches])
        self.rows = np.arange(self._starts[-1]) if rows is None else rows

    @property
    def rejected(self) -> list:
        """[message, kind, sample_id, where] of each record the conversion rejected, in file order."""
        return json.loads(_rejected_file(self.file).read_text(encoding="utf-8"))

    def __reduce__(self):  # data-loader workers reopen the map rather than copy the samples
        return SampleTable, (self.file, self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return SampleTable.__new__(SampleTable)._view(self, self.rows[index])
        row = int(self.rows[index])
        batch = bisect_right(self._starts, row) - 1
        return _sample(self._batches[batch].slice(row - self._starts[batch], 1).to_pylist()[0])

    def _view(self, other: "SampleTable", rows: np.ndarray) -> "SampleTable":
        self.file, self._batches, self._starts, self.rows = other.file, other._batches, other._starts, rows
        return self

    def __iter__(self) -> Iterator[Sample]:
        for batch, local in self._runs():
            yield from map(_sample, batch.take(local).to_pylist())

    def _runs(self) -> Iterator:
        """(record batch, positions in it) covering self.rows in order, BATCH rows at most each.
        (A take per record batch: Arrow's take over a whole chunked table copies every chunk.)"""
        for start in range(0, len(self.rows), BATCH):
            rows = self.rows[start:start + BATCH]
            which = np.searchsorted(self._starts, rows, side="right") - 1
            edges = [0, *(np.flatnonzero(np.diff(which)) + 1).tolist(), len(rows)]
            for begin, end in zip(edges, edges[1:]):
                batch = int(which[begin])
                yield self._batches[batch], rows[begin:end] - self._starts[batch]

    def without(self, positions) -> "SampleTable":
        return SampleTable.__new__(SampleTable)._view(self, np.delete(self.rows, list(positions)))

    def column(self, name: str) -> list:
        return [value for batch, local in self._runs() for value in batch.column(name).take(local).to_pylist()]

    def ids(self) -> list[str]:
        return self.column("id")

    def modality_lengths(self) -> list[int]:
        return self.column("length")

    def first_with_image_file(self) -> Optional[Sample]:
        """The first sample with an image read from a file (rather than stored inline)."""
        images = self.column("images")
        return next((self[i] for i, listed in enumerate(images) if any(map(is_file_image, listed))), None)


def _sample(row: dict) -> Sample:
    return Sample(row["id"], tuple(row["images"]), list(zip(row["questions"], row["answers"])), row["system"])
