"""What a language model's tokenizer files are, and what transformers needs to read them.

A folder with `tokenizer.json` loads as it is. One without it is converted when loaded: a
SentencePiece `tokenizer.model` (Llama 2, Vicuna, LLaVA-1.5, Mistral v0.1) through sentencepiece
and protobuf, a tiktoken-format `tokenizer.model` (Llama 3's original files) through tiktoken.
Light (no torch, no transformers), so launch checks can say what is missing before anything
heavy is imported.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Optional

# the file format -> (the module import looks for, the pip package that brings it)
LIBRARIES = {"sentencepiece": (("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")),
             "tiktoken": (("tiktoken", "tiktoken"),)}
TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/=]+ \d+\r?\n")  # "<base64 token> <rank>"


def tokenizer_format(folder: Path) -> Optional[str]:
    """"tokenizer.json", "sentencepiece", "tiktoken", "vocab files", or None (no tokenizer files)."""
    if (folder / "tokenizer.json").is_file():
        return "tokenizer.json"
    model = folder / "tokenizer.model"
    if model.is_file():
        with open(model, "rb") as handle:
            return "tiktoken" if TIKTOKEN_LINE.match(handle.readline(256)) else "sentencepiece"
    if any((folder / name).is_file() for name in ("vocab.json", "vocab.txt", "merges.txt")):
        return "vocab files"
    return None


def missing_libraries(folder: Path) -> list[str]:
    """The pip packages transformers needs to convert this folder's tokenizer and cannot import."""
    needed = LIBRARIES.get(tokenizer_format(folder) or "", ())
    return [package for module, package in needed if not _importable(module)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (google) is missing
        return False


def needs_conversion(folder: Path) -> bool:
    """Whether loading converts the files (no tokenizer.json): where loading can fail."""
    return tokenizer_format(folder) not in (None, "tokenizer.json")


def load_failure(folder: Path, error: BaseException) -> str:
    """One line: which tokenizer files did not load, why, and what to install where that helps."""
    kind = tokenizer_format(folder)
    what = {"tokenizer.json": "tokenizer.json", "sentencepiece": "tokenizer.model (SentencePiece)",
            "tiktoken": "tokenizer.model (tiktoken format)", "vocab files": "vocabulary files"}.get(kind, "tokenizer")
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    missing = missing_libraries(folder)
    install = f"; pip install {' '.join(missing)}" if missing else ""
    return f"its {what} does not load ({type(error).__name__}: {reason[:200]}){install}"
