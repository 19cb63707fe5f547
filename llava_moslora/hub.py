"""Hugging Face hub ids: telling one from a local path, and its snapshot folder (downloaded when
online; with HF_HUB_OFFLINE=1, what `hf download` left in the cache). Light: no torch, no
transformers, so launch checks can use it before anything heavy is imported."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence, Union

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name, as the hub spells repository ids
CONFIG_FILES = ("*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken")  # what a model needs besides weights


def looks_like_hub_id(path: Union[str, Path]) -> bool:
    """Whether `path` names no local file or folder and is spelled like owner/name."""
    return not Path(path).expanduser().exists() and HUB_ID.fullmatch(str(path)) is not None


def snapshot(repo_id: str, repo_type: str = "model", patterns: Optional[Sequence[str]] = None,
             cached_only: bool = False) -> Path:
    """The repository's snapshot folder (only `patterns`' files when given). FileNotFoundError
    naming the download to run when it cannot be fetched or found in the cache."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=patterns,
                                      local_files_only=cached_only))
    except Exception as error:  # not cached while offline, no network, an unknown or gated id
        kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
        raise FileNotFoundError(
            f"{repo_id}: no such file or folder, and as a hub id it could not be "
            f"{'found in' if cached_only else 'fetched or found in'} the Hugging Face cache ({type(error).__name__}). "
            f"Download it once (`hf download{kind} {repo_id}`), or give a local path") from None
