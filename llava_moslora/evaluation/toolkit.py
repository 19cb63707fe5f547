"""VLMEvalKit when it is installed: whether it is, a quiet import, and what it knows of benchmarks.

vlmeval is imported only on demand: the import is slow and changes process-wide settings.
"""
from __future__ import annotations

import functools
import importlib.util
import os


@functools.lru_cache(maxsize=None)
def vlmeval_available() -> bool:
    return importlib.util.find_spec("vlmeval") is not None


def import_vlmeval_quietly():
    """Import vlmeval offline: its litellm dependency fetches a price list at import otherwise."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import vlmeval

    return vlmeval


@functools.lru_cache(maxsize=None)
def vlmeval_knows(name: str) -> bool:
    """Whether `name` is one of VLMEvalKit's own datasets (it downloads and checks those)."""
    import_vlmeval_quietly()
    from vlmeval.dataset import SUPPORTED_DATASETS

    return name in SUPPORTED_DATASETS


def vlmeval_type(name: str) -> str:
    import_vlmeval_quietly()
    from vlmeval.dataset import DATASET_TYPE

    return DATASET_TYPE(name)


def load_vlmeval_env() -> None:
    """Read the .env file VLMEvalKit keeps its API keys in (its run.py does this at start)."""
    if vlmeval_available():
        import_vlmeval_quietly()
        from vlmeval.smp import load_env

        load_env()
