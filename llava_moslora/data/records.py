"""Reading conversation data (a JSON list, JSONL, parquet, Arrow, or a `datasets` directory) into
checked samples.

A record is LLaVA's {"id", optional "image" (path relative to --image_folder), "conversations":
[{"from": "human"|"gpt", "value": ...}, ...]}, or the form LLaMA-Factory and ms-swift read:
{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...], "images": [path]}.
Every problem is a DataError that names the file, the sample id and, for JSONL, the line, and
carries a `kind` (see data/validate.py) so that validate-data and --skip_bad_samples can sort
and count them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from .templates import IMAGE_TOKEN, Turns

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant"}
BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")  # a long run of these is an image's bytes, not a path
TABLE_FORMATS = {".parquet": "parquet", ".arrow": "arrow"}  # read through `datasets`, memory-mapped
ACCEPTED = ("a LLaVA JSON list, JSONL, a .parquet or .arrow file, or a datasets.save_to_disk folder "
            "(several joined with commas)")


class DataError(ValueError):
    """Bad input data; the message names the file and the sample, `kind` says what is wrong."""

    def __init__(self, message: str, kind: str = "invalid", sample_id: Optional[str] = None,
                 where: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind, self.sample_id, self.where = kind, sample_id, where


@dataclass
class Sample:
    id: str
    image: Optional[str]
    turns: Turns
    system: Optional[str] = None

    @property
    def text_length(self) -> int:
        """Words in the conversation: the length LLaVA groups batches by."""
        return sum(len(q.split()) + len((a or "").split()) for q, a in self.turns)

    @property
    def modality_length(self) -> int:
        """Positive for image samples, negative for text-only ones (LLaVA's convention)."""
        return self.text_length if self.image else -self.text_length


def iter_records(path: Union[str, Path],
                 on_malformed: Optional[Callable[[DataError], None]] = None) -> Iterator[tuple[dict, str]]:
    """Yield (record, where) pairs; `where` locates the record for error messages. A JSONL line
    that does not parse raises, or with `on_malformed` is handed to it and skipped."""
    path = Path(path)
    if path.is_dir():
        import datasets
        for index, record in enumerate(datasets.load_from_disk(str(path))):
            yield record, f"{path} (row {index})"
        return
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix.lower() in TABLE_FORMATS:
        import datasets
        table = (datasets.Dataset.from_parquet(str(path)) if TABLE_FORMATS[path.suffix.lower()] == "parquet"
                 else datasets.Dataset.from_file(str(path)))
        for index, record in enumerate(_undecoded(table)):
            yield record, f"{path} (row {index})"
        return
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


def _undecoded(table):
    """A datasets table whose image columns give their stored {"bytes", "path"} rather than
    decoded PIL images (decoding every image to read the records would cost far too much)."""
    import datasets
    for name, feature in table.features.items():
        if isinstance(feature, datasets.Image):
            table = table.cast_column(name, datasets.Image(decode=False))
        elif isinstance(feature, datasets.Sequence) and isinstance(feature.feature, datasets.Image):
            table = table.cast_column(name, datasets.Sequence(datasets.Image(decode=False)))
        elif isinstance(feature, list) and feature and isinstance(feature[0], datasets.Image):
            table = table.cast_column(name, [datasets.Image(decode=False)])
    return table


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
    """Check one record and normalise it: roles to (user, assistant) pairs, `<image>` moved to
    the start of the first user turn as LLaVA does."""
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

    image = _image_path(record.get("image"), where, sample_id)
    questions = messages[0::2]
    count = sum(q.count(IMAGE_TOKEN) for q in questions) + sum(a.count(IMAGE_TOKEN) for a in messages[1::2])
    if image and count == 0:
        raise _fail(where, sample_id, "image_token_mismatch", f"has an image ({image}) but no {IMAGE_TOKEN} in its conversation")
    if not image and count:
        raise _fail(where, sample_id, "image_token_mismatch", f"has {IMAGE_TOKEN} in its conversation but no 'image'")
    if count > 1 or (count == 1 and IMAGE_TOKEN not in questions[0]):
        raise _fail(where, sample_id, "image_token_mismatch", f"needs exactly one {IMAGE_TOKEN}, in the first human turn")
    if image:
        questions[0] = IMAGE_TOKEN + "\n" + questions[0].replace(IMAGE_TOKEN, "").strip()
    return Sample(sample_id, image, list(zip(questions, messages[1::2])), system)


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
    images = record.get("images")
    if images is not None and not isinstance(images, list):
        images = [images]
    if images and len(images) > 1:
        raise _fail(where, sample_id, "image_token_mismatch",
                    f"has {len(images)} images; one image per sample is read so far")
    return {"conversations": conversations, "image": images[0] if images else None}


def _image_path(image: Any, where: str, sample_id: str) -> Optional[str]:
    """The record's image path; an image stored inside the data (bytes, {"bytes": ...},
    base64) is refused with what is read instead."""
    if isinstance(image, dict):
        if image.get("bytes"):
            raise _fail(where, sample_id, "embedded_image", "its image is stored in the data (bytes); images are "
                        "read from files so far: give their paths relative to --image_folder")
        image = image.get("path")
    if isinstance(image, (bytes, bytearray)) or (isinstance(image, str) and (
            image.startswith("data:image") or (len(image) > 256 and BASE64.fullmatch(image)))):
        raise _fail(where, sample_id, "embedded_image", "its image is stored in the data (bytes or base64); "
                    "images are read from files so far: give their paths relative to --image_folder")
    if image is not None and not isinstance(image, str):
        raise _fail(where, sample_id, "malformed_turn", f"'image' must be a path, got {type(image).__name__}")
    return image or None


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
