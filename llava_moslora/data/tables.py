"""Table-shaped data read through `datasets`, memory-mapped: parquet and Arrow files,
`save_to_disk` folders, and Hugging Face dataset folders or ids (`load_dataset`).

Images stored in a table (a `datasets.Image` column, {"bytes", "path"} structs, raw bytes or
base64 strings, alone or in lists) are never read while the records are: each becomes a
TableImage, a reference (source, row, column, position in a list) whose bytes are fetched from
the memory-mapped table when its sample is drawn. So no process ever holds every image.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from ..hub import looks_like_hub_id, snapshot

IMAGE_COLUMNS = ("image", "images")  # the columns records.parse_sample reads images from
TABLE_FORMATS = {".parquet": "parquet", ".arrow": "arrow"}
BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")  # a long run of these is an image's bytes, not a path
ROWS_PER_BATCH = 1024


class TableError(ValueError):
    """A table source that cannot be opened as data."""


@dataclass(frozen=True)
class TableImage:
    """An image stored in row `row`, column `column` (item `position` of a list) of `source`."""

    source: str
    row: int
    column: str
    position: Optional[int] = None

    def __str__(self) -> str:  # how error messages name it
        item = "" if self.position is None else f"[{self.position}]"
        return f"{self.column}{item} of row {self.row} in {self.source}"


def is_inline(value: str) -> bool:
    """Whether an image string is the image itself (a data URI or base64) rather than a path."""
    return value.startswith("data:image") or (len(value) > 256 and BASE64.fullmatch(value) is not None)


def is_table_source(path: Union[str, Path]) -> bool:
    """Whether `path` is read as a table: a .parquet / .arrow file, a folder that is not a JSON
    file, or a dataset id (owner/name) that is no local path."""
    path_ = Path(path)
    if path_.suffix.lower() in TABLE_FORMATS:
        return True
    if path_.is_dir():
        return True
    return looks_like_hub_id(path) and not path_.suffix


@functools.lru_cache(maxsize=32)
def open_table(source: str):
    """The `datasets.Dataset` of a table source, memory-mapped (opened once per process)."""
    import datasets

    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in TABLE_FORMATS and not path.is_file():
        raise TableError(f"data file not found: {path}")
    if TABLE_FORMATS.get(suffix) == "parquet":
        table = datasets.Dataset.from_parquet(str(path))
    elif TABLE_FORMATS.get(suffix) == "arrow":
        table = datasets.Dataset.from_file(str(path))
    elif (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        table = datasets.load_from_disk(str(path))  # a save_to_disk folder
    elif path.is_dir():
        table = _load(source, str(path), "a dataset folder")
    else:
        table = _load(source, _hub_snapshot(source) or source, "no local file or folder; as a dataset id")
    if isinstance(table, datasets.DatasetDict):
        table = _split(table, source)
    return table.flatten_indices() if table._indices is not None else table


def _load(source: str, where: str, what: str):
    """load_dataset of a folder of data files or a dataset id; a TableError says which failed."""
    import datasets

    try:
        return datasets.load_dataset(where)
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds; say which source failed
        hint = (f"; offline, download it first (hf download --repo-type dataset {source})"
                if what.startswith("no local") else "")
        raise TableError(f"cannot read {source} ({what}: {type(error).__name__}: {error}){hint}") from None


def _hub_snapshot(repo_id: str):
    """The folder of a dataset repository already in the Hugging Face hub cache (as `hf download`
    leaves it), so an id reads offline as a model id does; None when it is not there."""
    try:
        return str(snapshot(repo_id, repo_type="dataset", cached_only=True))
    except FileNotFoundError:  # not cached (or no such repository): load_dataset decides
        return None


def _split(tables, source: str):
    if "train" in tables:
        return tables["train"]
    if len(tables) == 1:
        return next(iter(tables.values()))
    raise TableError(f"{source} holds the splits {sorted(tables)} and none is 'train'; save the one to train on alone")


def iter_table(source: str) -> Iterator[dict]:
    """The rows of a table source as dicts, image columns as TableImage references (or path
    strings, for images stored by path), a list column as a list of them."""
    table = open_table(source)
    arrow = table.data.table
    columns = [c for c in IMAGE_COLUMNS if c in arrow.column_names]
    row = 0
    for batch in arrow.to_batches(max_chunksize=ROWS_PER_BATCH):
        rest = batch.drop_columns(columns).to_pylist()
        images = {c: _references(batch.column(c), source, c, row) for c in columns}
        for offset, record in enumerate(rest):
            yield {**record, **{c: images[c][offset] for c in columns}}
        row += len(rest)


def _references(array, source: str, column: str, first_row: int) -> list:
    """Per row of an image column: None, a path string, a TableImage, or a list of those; the
    image bytes themselves are not read."""
    import pyarrow as pa

    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lengths = array.value_lengths().to_pylist()
        flat = _one_each(array.flatten())
        out, at = [], 0
        for offset, length in enumerate(lengths):
            if length is None:
                out.append(None)
                continue
            items = flat[at:at + length]
            out.append([TableImage(source, first_row + offset, column, k) if isinstance(item, TableImage) else item
                        for k, item in enumerate(items)])
            at += length
        return out
    items = _one_each(array)
    return [TableImage(source, first_row + k, column) if isinstance(item, TableImage) else item
            for k, item in enumerate(items)]


_STORED = TableImage("", 0, "")  # stands for "stored in the table" until its row is known


def _one_each(array) -> list:
    """For each item of a flat image array: None, its path (stored by path only) or _STORED."""
    import pyarrow as pa

    kind = array.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        has_bytes = array.field("bytes").is_valid().to_pylist()
        paths = (array.field("path").to_pylist() if kind.get_field_index("path") >= 0 else [None] * len(array))
        valid = array.is_valid().to_pylist()
        return [None if not ok else _STORED if stored else path for ok, stored, path in zip(valid, has_bytes, paths)]
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return [_STORED if ok else None for ok in array.is_valid().to_pylist()]
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return [_STORED if isinstance(v, str) and is_inline(v) else v for v in array.to_pylist()]
    return [NotAnImage(str(kind)) if ok else None for ok in array.is_valid().to_pylist()]


@dataclass(frozen=True)
class NotAnImage:
    """A value of an image column whose type holds no image (records.parse_sample names it)."""

    column_type: str


def stored_image(reference: TableImage) -> Union[bytes, str]:
    """The stored image of a reference: its bytes, or (stored as text) its base64 string."""
    value = open_table(reference.source).data.table.column(reference.column)[reference.row].as_py()
    if reference.position is not None:
        value = value[reference.position]
    if isinstance(value, dict):
        value = value.get("bytes")
    return value
