"""Reading conversation data (a JSON list, JSONL, parquet, Arrow, or a `datasets` directory) into
checked samples.

A record is LLaVA's {"id", optional "image" (one image or a list), "conversations": [{"from":
"human"|"gpt", "value": ...}, ...]}, or the form LLaMA-Factory and ms-swift read: {"messages":
[{"role": "system"|"user"|"assistant", "content": ...}, ...], "images": [...]}. An image is a path
relative to --image_folder, base64 text, or (in a table) stored bytes; one `<image>` per image.
Every problem is a DataError that names the file, the sample id and, for JSONL, the line, and
carries a `kind` (see data/validate.py) so that validate-data and --skip_bad_samples can sort
and count them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from .tables import NotAnImage, TableError, TableImage, is_inline, is_table_source, iter_table
from .templates import IMAGE_TOKEN, Turns

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant"}
ACCEPTED = ("a LLaVA JSON list, JSONL, a .parquet or .arrow file, a datasets folder (save_to_disk or data "
            "files) or dataset id (several joined with commas)")


class DataError(ValueError):
    """Bad input data; the message names the file and the sample, `kind` says what is wrong."""

    def __init__(self, message: str, kind: str = "invalid", sample_id: Optional[str] = None,
                 where: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind, self.sample_id, self.where = kind, sample_id, where


@dataclass
class Sample:
    """A checked conversation. `images`: one per `<image>` in its turns, in order (see _images
    for what an image can be)."""

    id: str
    images: tuple
    turns: Turns
    system: Optional[str] = None

    @property
    def text_length(self) -> int:
        """Words in the conversation: the length LLaVA groups batches by."""
        return sum(len(q.split()) + len((a or "").split()) for q, a in self.turns)

    @property
    def modality_length(self) -> int:
        """Positive for image samples, negative for text-only ones (LLaVA's convention)."""
        return self.text_length if self.images else -self.text_length


def is_file_image(image) -> bool:
    """Whether a sample's image is a path (read from --image_folder) rather than stored in the data."""
    return isinstance(image, str) and not is_inline(image)


def iter_records(path: Union[str, Path],
                 on_malformed: Optional[Callable[[DataError], None]] = None) -> Iterator[tuple[dict, str]]:
    """Yield (record, where) pairs; `where` locates the record for error messages. A JSONL line
    that does not parse raises, or with `on_malformed` is handed to it and skipped."""
    if is_table_source(path):
        try:
            for index, record in enumerate(iter_table(str(path))):
                yield record, f"{path} (row {index})"
        except TableError as error:
            raise DataError(str(error), where=str(path)) from None
        return
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        with path.open(encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text, so not JSON or JSONL; give the data as {ACCEPTED} "
                        f"(a parquet or Arrow file needs its .parquet / .arrow suffix)", "malformed_line",
                        where=str(path)) from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            where = f"{path} (line {error.lineno})"
            raise DataError(f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}",
                            "malformed_line", where=where) from None
        for index, record in enumerate(records):
            yield record, f"{path} (item {index})"
        return
    for number, line in enumerate(text.splitlines(), start=1):
        yield from jsonl_line(path, line, number, on_malformed)


def jsonl_line(path: Path, line: str, number: int,
               on_malformed: Optional[Callable[[DataError], None]] = None) -> Iterator[tuple[dict, str]]:
    """The (record, where) of one JSONL line: nothing for a blank line; a malformed one raises,
    or with `on_malformed` is handed to it."""
    if not line.strip():
        return
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        malformed = DataError(f"{path}: malformed JSON on line {number}: {error.msg}", "malformed_line",
                              where=f"{path} (line {number})")
        if on_malformed is None:
            raise malformed from None
        on_malformed(malformed)
        return
    yield record, f"{path} (line {number})"


def _fail(where: str, sample_id: str, kind: str, message: str) -> DataError:
    return DataError(f"{where}, sample {sample_id!r}: {message}", kind, sample_id, where)


def parse_sample(record: Any, where: str, index: int) -> Sample:
    """Check one record and normalise it: roles to (user, assistant) pairs; one image's
    `<image>` moved to the start of the first user turn as LLaVA does, several images'
    placeholders left where they are (one per image, in the images' order)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}", "malformed_line",
                        where=where)
    sample_id = str(record.get("id", index))
    if "conversations" not in record and "messages" in record:
        record = _from_messages(record, where, sample_id)
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise _fail(where, sample_id, "empty_conversation", "empty or missing 'conversations'")
    system = None
    if isinstance(conversations[0], dict) and conversations[0].get("from") == "system":
        system, conversations = str(conversations[0].get("value", "")), conversations[1:]
    messages = []
    for position, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise _fail(where, sample_id, "malformed_turn", f"turn {position} must be an object with a string 'value'")
        role = turn.get("from")
        if role in USER_ROLES:
            expected = len(messages) % 2 == 0
        elif role in ASSISTANT_ROLES:
            expected = len(messages) % 2 == 1
        else:
            raise _fail(where, sample_id, "unknown_role", f"unknown role {role!r} in turn {position} "
                                          f"(expected one of {sorted(USER_ROLES | ASSISTANT_ROLES)})")
        if not expected:
            raise _fail(where, sample_id, "non_alternating", f"turn {position} ({role}) breaks the human/gpt alternation")
        messages.append(turn["value"])
    if not messages:
        raise _fail(where, sample_id, "empty_conversation", "empty conversation")
    if len(messages) % 2:
        raise _fail(where, sample_id, "non_alternating", "the conversation ends with a human turn that has no reply")

    images = _images(record.get("image"), where, sample_id)
    questions, replies = messages[0::2], messages[1::2]
    placeholders = sum(q.count(IMAGE_TOKEN) for q in questions)
    if any(IMAGE_TOKEN in reply for reply in replies):
        raise _fail(where, sample_id, "image_token_mismatch", f"has {IMAGE_TOKEN} in a reply; images go in user turns")
    if placeholders and not images and "image" not in record:
        raise _fail(where, sample_id, "image_token_mismatch", f"has {placeholders} {IMAGE_TOKEN} placeholder"
                    f"{'s' * (placeholders != 1)} but no image column ('image', or 'images' with 'messages')")
    if placeholders != len(images):
        given = f"{len(images)} image{'s' * (len(images) != 1)}"
        raise _fail(where, sample_id, "image_token_mismatch",
                    f"has {given} but {placeholders} {IMAGE_TOKEN} placeholder{'s' * (placeholders != 1)} "
                    "in its conversation (one per image, in the order of the images)")
    if len(images) == 1 and IMAGE_TOKEN in questions[0]:
        questions[0] = IMAGE_TOKEN + "\n" + questions[0].replace(IMAGE_TOKEN, "").strip()
    return Sample(sample_id, tuple(images), list(zip(questions, replies)), system)


def _from_messages(record: dict, where: str, sample_id: str) -> dict:
    """The messages + images form as LLaVA's conversations + image. Content is a string, or a
    list of parts ({"type": "text", "text"} / {"type": "image"}), an image part standing for
    <image>."""
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise _fail(where, sample_id, "empty_conversation", "empty or missing 'messages'")
    conversations = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _fail(where, sample_id, "malformed_turn", f"message {position} must be an object")
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(IMAGE_TOKEN if isinstance(part, dict) and part.get("type") == "image"
                              else str(part.get("text") or "") if isinstance(part, dict) else str(part)
                              for part in content)
        role = message.get("role")
        conversations.append({"from": "system" if role == "system" else role, "value": content})
    return {"conversations": conversations, **({"image": record["images"]} if "images" in record else {})}


def _images(value: Any, where: str, sample_id: str) -> list:
    """The record's images (its 'image' or 'images'): each a path relative to --image_folder, an
    inline base64 / data-URI string, or a TableImage (stored in a parquet / Arrow table)."""
    items = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
    images = []
    for position, item in enumerate(items):
        if isinstance(item, dict):  # {"bytes", "path"}, as datasets.Image stores an image
            data = item.get("bytes")
            if isinstance(data, str) and data:
                item = data  # base64 in a JSON file
            elif data:
                raise _fail(where, sample_id, "embedded_image", "holds raw image bytes, which only a parquet or "
                            "Arrow table can store; give them there, or as base64 text")
            else:
                item = item.get("path")
        if isinstance(item, (str, TableImage)) and str(item).strip():
            images.append(item)
        elif item is None or item == "":
            if len(items) > 1:
                raise _fail(where, sample_id, "missing_image", f"image {position} of its image list is empty")
        else:
            kind = f"column type {item.column_type}" if isinstance(item, NotAnImage) else f"a {type(item).__name__}"
            raise _fail(where, sample_id, "malformed_turn", "an image must be a path, base64 text, or stored image "
                        f"bytes; got {kind}")
    return images


def data_paths(path: Union[str, Path]) -> list:
    """The files of a data path: one, or several given as "a.json,b.jsonl"."""
    return [p for p in str(path).split(",") if p] if "," in str(path) else [path]


def load_samples(path: Union[str, Path], rejected: Optional[list[DataError]] = None) -> list[Sample]:
    """Samples of one data file, or of several given as "a.json,b.jsonl" (read in that order).

    The first bad record raises its DataError; with a `rejected` list, every bad record (and
    malformed line) is appended there instead and the rest are returned.
    """
    samples = []
    for one in data_paths(path):
        for index, (record, where) in enumerate(iter_records(one, rejected.append if rejected is not None else None)):
            try:
                samples.append(parse_sample(record, where, index))
            except DataError as error:
                if rejected is None:
                    raise
                rejected.append(error)
    return samples
