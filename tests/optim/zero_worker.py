"""Run under torchrun: Riemannian-hooked adapter models under DeepSpeed ZeRO.

`zero2 KIND OUT`: one SGD step under ZeRO-2; each rank trains on its half of a fixed batch in two
micro-batches (gradient accumulation); rank 0 writes the adapter tensors as JSON.
`zero3 KIND OUT`: hooks attached before and after ZeRO-3 partitions the factors; rank 0 writes
the errors each way raised. Shared with the test: build_model, batch.
"""
import json
import sys

import torch
from torch import nn

from llava_moslora.adapters import AdapterConfig, adapter_state_dict, apply_adapters
from llava_moslora.optim import attach_riemannian

LR, REG = 0.1, 1e-4


def build_model(kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))
    apply_adapters(model, AdapterConfig(kind=kind, r=4, num_experts=3, top_k=2, gate_rescale="sqrt"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0, 0.3)
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 16, generator=g), torch.randn(8, 8, generator=g)


def zero2(kind, out_path):
    import deepspeed
    model = build_model(kind)
    attach_riemannian(model, reg=REG)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config(2))
    x, y = batch()
    rank, world = engine.global_rank, engine.world_size
    shard = x.shape[0] // world
    x, y = x[rank * shard:(rank + 1) * shard], y[rank * shard:(rank + 1) * shard]
    for micro in range(2):
        part = slice(2 * micro, 2 * micro + 2)
        engine.backward(((engine(x[part]) - y[part]) ** 2).mean())
        engine.step()
    if rank == 0:
        write(out_path, {k: v.tolist() for k, v in adapter_state_dict(engine.module).items()})


def zero3(kind, out_path):
    import deepspeed
    model = build_model(kind)
    attach_riemannian(model, reg=REG)  # before partitioning, as a trainer would
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config(3))
    errors = {}
    x, y = batch()
    try:
        engine.backward(((engine(x[:2]) - y[:2]) ** 2).mean())
    except RuntimeError as error:
        errors["backward"] = str(error)
    try:
        attach_riemannian(engine.module, reg=REG)
    except RuntimeError as error:
        errors["attach"] = str(error)
    if engine.global_rank == 0:
        write(out_path, errors)


def ds_config(stage):
    return {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
            "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
            "gradient_clipping": 0.0, "steps_per_print": 10_000}


def write(path, data):
    with open(path, "w") as f:
        json.dump(data, f)


if __name__ == "__main__":
    from llava_moslora.train.main import exit_without_teardown, shut_down_process_group

    mode, kind, out = sys.argv[1:]
    {"zero2": zero2, "zero3": zero3}[mode](kind, out)
    # As training ranks do: leave the group together, then skip the interpreter's teardown, where
    # a native gloo / shared-memory thread can abort the process (SIGABRT) after a finished run.
    shut_down_process_group()
    exit_without_teardown(0)
