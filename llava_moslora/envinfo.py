"""`llava-moslora env`: the installed stack and the accelerators it can use, for bug reports."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform

PACKAGES = ("llava-moslora", "torch", "transformers", "deepspeed", "accelerate", "peft", "datasets",
            "safetensors", "tokenizers", "sentencepiece", "pillow", "vlmeval")


def collect() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    import torch
    info["cuda_available"] = torch.cuda.is_available()
    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["torch_cuda"] = torch.version.cuda
    info["bf16_supported"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return info


def add_arguments(parser: argparse.ArgumentParser, name: str = "env") -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace, name: str = "env") -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0
