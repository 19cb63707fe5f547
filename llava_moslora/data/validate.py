"""Checking a whole LLaVA-format dataset before a run: every fault, named by sample id.

One set of rules serves `llava-moslora validate-data` and training's start-up screen:
  * record faults (data/records.py): malformed lines, unknown roles, empty or non-alternating
    conversations, `<image>` mismatches;
  * duplicate ids (the first occurrence is kept);
  * image faults: a missing file, or one (or stored bytes) that does not decode;
  * template faults: every label masked, or the image tokens alone longer than the maximum
    length. A sample whose replies are cut by the maximum length is a warning: it still trains.
Sample checks run in worker processes (tokenising and decoding are CPU-bound).
"""
from __future__ import annotations

import base64
import io
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence


from .images import ImageError, describe, read_image, stored_bytes
from .records import DataError, Sample, is_file_image
from .templates import IMAGE_TOKEN, Template
from .tokenize import SampleTooLong, summarise_conversations, token_id

WARNING_KINDS = frozenset({"truncated"})


@dataclass(frozen=True)
class Finding:
    """One fault of one sample. `index` is the sample's position among the parsed samples (None
    for a record that did not parse); `sample_id` is None for a line with no readable id."""

    kind: str
    sample_id: Optional[str]
    where: str
    message: str
    index: Optional[int] = None

    @property
    def is_error(self) -> bool:
        return self.kind not in WARNING_KINDS

    @classmethod
    def from_error(cls, error: DataError) -> "Finding":
        return cls(error.kind, error.sample_id, error.where or "", str(error))


@dataclass
class SampleChecker:
    """The per-sample checks under one template, tokenizer and maximum length.

    image_check: "decode" opens and decodes every image (validate-data); "header" only reads
    the file header, which catches missing and non-image files in a fraction of the time
    (training's start-up screen; a file corrupt past its header is met, and skipped or
    reported, when the sample is drawn).
    """

    template: Template
    tokenizer: object
    num_image_tokens: int
    max_length: int
    image_folder: Optional[Path] = None
    system: Optional[str] = None
    image_check: str = "decode"
    _image_id: Optional[int] = field(default=None, init=False, repr=False)

    def __call__(self, sample: Sample) -> list[Finding]:
        return self.check_many([sample])[0]

    def check_many(self, samples: Sequence[Sample]) -> list[list[Finding]]:
        """The findings of each sample (one tokenizer call for them all)."""
        if self._image_id is None:
            self._image_id = token_id(self.tokenizer, IMAGE_TOKEN)
        summaries = summarise_conversations(
            self.template, self.tokenizer,
            [(sample.turns, sample.system if sample.system is not None else self.system,
              len(sample.images)) for sample in samples],
            num_image_tokens=self.num_image_tokens, max_length=self.max_length, image_id=self._image_id)
        return [self._findings(sample, summary) for sample, summary in zip(samples, summaries)]

    def _findings(self, sample: Sample, summary) -> list[Finding]:
        where = f"sample {sample.id!r}"
        findings = []
        for image in sample.images:
            fault = self._image_fault(image)
            if fault:
                findings.append(Finding(fault[0], sample.id, where, fault[1]))
        if isinstance(summary, SampleTooLong):
            return findings + [Finding("too_long", sample.id, where, str(summary))]
        if isinstance(summary, ValueError):  # the text's <image> count does not survive tokenisation
            return findings + [Finding("image_token_mismatch", sample.id, where, str(summary))]
        if summary.fully_masked:
            cause = " (its replies were cut by the maximum length)" if summary.truncated else ""
            findings.append(Finding("fully_masked", sample.id, where,
                                    f"every label is masked under template {self.template.name!r}{cause}"))
        elif summary.truncated:
            findings.append(Finding("truncated", sample.id, where,
                                    f"cut to {self.max_length} tokens; the rest of its replies is not trained on"))
        return findings

    def _image_fault(self, image) -> Optional[tuple[str, str]]:
        """(kind, message) of what is wrong with one image, or None. The pixel limit is read from
        the header in either check mode."""
        decode = self.image_check == "decode"
        if not is_file_image(image):
            try:
                read_image(io.BytesIO(stored_bytes(image)), f"the image bytes of {describe(image)}", "decode", decode)
            except ImageError as error:
                return "unreadable_image", str(error)
            return None
        if self.image_folder is None:
            return "missing_image", f"has image {image!r} but no image folder was given"
        path = self.image_folder / image
        if not path.is_file():
            return "missing_image", f"image file not found: {path}"
        try:
            read_image(path, f"image {path}", decode=decode)
        except ImageError as error:
            return "unreadable_image", str(error)
        return None


def all_findings(rejected: Sequence[DataError], samples: Sequence[Sample], checked: list[Finding],
                 sources: Optional[Sequence[int]] = None) -> list[Finding]:
    """Records that did not parse, repeated ids, then the per-sample findings (`checked`)."""
    return [Finding.from_error(error) for error in rejected] + duplicate_findings(samples, sources) + checked


def duplicate_findings(samples: Sequence[Sample], sources: Optional[Sequence[int]] = None) -> list[Finding]:
    """Every repeat of an id after its first occurrence; with `sources` (each sample's source in
    a mixture), within its own source only: two datasets may both number their samples from 0."""
    ids = samples.ids() if hasattr(samples, "ids") else [sample.id for sample in samples]  # SampleTable: one column
    keys = ids if sources is None else list(zip(sources, ids))
    first: dict = {}
    findings = []
    for index, (key, sample_id) in enumerate(zip(keys, ids)):
        if key in first:
            findings.append(Finding("duplicate_id", sample_id, f"sample {sample_id!r}",
                                    f"sample #{index} repeats the id of sample #{first[key]}", index))
        else:
            first[key] = index
    return findings


_checker: Optional[SampleChecker] = None


def _install(checker: SampleChecker) -> None:
    global _checker
    _checker = checker


def _check_in_worker(samples: Sequence[Sample]) -> list[list[Finding]]:
    return _checker.check_many(samples)


def _indexed(results: Iterable[list[Finding]], offset: int = 0) -> list[Finding]:
    return [replace(f, index=offset + i) for i, found in enumerate(results) for f in found]


CHUNK = 128  # samples per tokenizer call (and per task sent to a worker)


def check_samples(samples: Sequence[Sample], checker: SampleChecker, *, workers: int = 0,
                  progress: bool = True, description: str = "checking samples") -> list[Finding]:
    """Run `checker` on every sample, in `workers` processes (0: in this one), in sample order;
    each finding's `index` is its sample's position in `samples`."""
    from tqdm.auto import tqdm

    chunks = (samples[start:start + CHUNK] for start in range(0, len(samples), CHUNK))
    bar = tqdm(total=len(samples), desc=description, unit="sample", disable=not progress, mininterval=1.0)

    def counted(results: Iterable[list[list[Finding]]]) -> Iterator[list[Finding]]:
        for found in results:
            bar.update(len(found))
            yield from found

    with bar:
        if workers <= 0 or len(samples) < 2 * workers:
            return _indexed(counted(checker.check_many(chunk) for chunk in chunks))
        # fork: the workers inherit the checker (tokenizer included) instead of unpickling it each.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_install,
                                 initargs=(checker,)) as pool:
            return _indexed(counted(pool.map(_check_in_worker, chunks)))


@dataclass
class Report:
    """Everything validate-data found, with counts."""

    total: int  # records read, malformed ones included
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.is_error]

    @property
    def bad_indices(self) -> set:
        """Positions (among the parsed samples) of the samples with an error."""
        return {f.index for f in self.errors if f.index is not None}

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(f.kind for f in self.findings).items()))

    def summary(self) -> str:
        errors = self.errors
        flagged = len(self.bad_indices) + sum(f.index is None for f in errors)
        kinds = ", ".join(f"{kind} {count}" for kind, count in self.counts().items()) or "none"
        return (f"{self.total} records: {self.total - flagged} valid, {flagged} with errors "
                f"({len(errors)} errors, {len(self.findings) - len(errors)} warnings). By kind: {kinds}")

    def write_jsonl(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            for finding in self.findings:
                handle.write(json.dumps({**asdict(finding), "severity": "error" if finding.is_error else "warning"}) + "\n")


def clean_records(samples: Sequence[Sample], report: Report) -> list[dict]:
    """The samples without errors, as LLaVA records (system prompts kept)."""
    bad = report.bad_indices
    return [to_record(sample) for index, sample in enumerate(samples) if index not in bad]


def to_record(sample: Sample) -> dict:
    conversations = [{"from": "system", "value": sample.system}] if sample.system is not None else []
    for question, answer in sample.turns:
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    images = [image if is_file_image(image) else base64.b64encode(stored_bytes(image)).decode("ascii")
              for image in sample.images]  # images stored in a table are written inline
    image = {} if not images else {"image": images[0] if len(images) == 1 else images}
    return {"id": sample.id, **image, "conversations": conversations}
