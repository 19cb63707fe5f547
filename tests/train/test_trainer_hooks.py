"""The Trainer hooks LlavaTrainer relies on: the private methods it still overrides exist upstream
with the parameters it uses (this fails first when transformers renames one), and the public
callback that replaced the _run_epoch override tells the sampler the epoch of a resumed run."""
import inspect

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from llava_moslora.train.trainer import PRIVATE_OVERRIDES, LlavaTrainer, SamplerEpoch


def test_every_private_override_exists_upstream_with_the_same_parameters():
    overridden = {name for name, value in vars(LlavaTrainer).items()
                  if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(Trainer, name)}
    assert overridden == set(PRIVATE_OVERRIDES), "PRIVATE_OVERRIDES must list every private Trainer method overridden"
    for name, parameters in PRIVATE_OVERRIDES.items():
        upstream = tuple(inspect.signature(getattr(Trainer, name)).parameters)
        assert upstream == parameters, f"Trainer.{name} is now {upstream}; check LlavaTrainer.{name} against it"


class Recorded(torch.utils.data.Sampler):
    """A sampler that notes the epoch it is told each time an epoch's order is drawn."""

    def __init__(self, size):
        self.size, self.epoch, self.drawn = size, 0, []

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.size

    def __iter__(self):
        self.drawn.append(self.epoch)
        return iter(torch.randperm(self.size, generator=torch.Generator().manual_seed(self.epoch)).tolist())


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return {"loss": ((self.weight - x) ** 2).mean()}


class Sampled(Trainer):
    def __init__(self, *args, **kwargs):
        self.grouped_sampler = Recorded(8)
        super().__init__(*args, **kwargs)
        self.add_callback(SamplerEpoch(self))

    def _get_train_sampler(self, train_dataset=None):
        return self.grouped_sampler


def test_the_callback_tells_the_sampler_the_epoch_being_run():
    from types import SimpleNamespace

    trainer = SimpleNamespace(grouped_sampler=Recorded(4))
    for progress, epoch in ((0.0, 0), (1.0, 1), (1.4999, 1), (2.0, 2)):  # fresh starts, and resuming mid-epoch
        SamplerEpoch(trainer).on_epoch_begin(None, SimpleNamespace(epoch=progress), None)
        assert trainer.grouped_sampler.epoch == epoch


def test_a_run_resumed_in_its_second_epoch_draws_that_epochs_order(tmp_path):
    """End to end on one process (where transformers 5.23 also reaches the sampler itself; the
    callback is what keeps it so under accelerate's wrappers and any later Trainer)."""
    data = [{"x": torch.tensor([float(i)])} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=2,
                             save_strategy="steps", save_steps=6, report_to="none", use_cpu=True,
                             disable_tqdm=True, logging_strategy="no")
    whole = Sampled(model=Toy(), args=args, train_dataset=data)
    whole.train()
    assert whole.grouped_sampler.drawn == [0, 1, 2]
    resumed = Sampled(model=Toy(), args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))  # step 6: halfway through epoch 1
    assert resumed.grouped_sampler.drawn == [1, 2]


def test_a_resumed_load_forgives_only_the_missing_frozen_parameters():
    """DeepSpeed's checkpoints leave the frozen base out; the Trainer loads them strictly."""
    import pytest

    from llava_moslora.train.trainer import frozen_parameters_may_be_missing

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    trained = {k: v for k, v in model.state_dict().items() if k.startswith("1.")}
    with frozen_parameters_may_be_missing(model):
        model.load_state_dict(trained)  # strict, yet the frozen layer may be absent
        with pytest.raises(RuntimeError, match=r"Missing key\(s\).*1\.bias"):
            model.load_state_dict({"1.weight": trained["1.weight"]})  # a trained one may not
        with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*extra"):
            model.load_state_dict({**trained, "extra": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*0\.weight"):
        model.load_state_dict(trained)  # outside the resume, strict as ever


def test_a_rate_lost_on_the_way_to_deepspeed_stops_the_run():
    """RatesKept reads the innermost optimizer (accelerate's and DeepSpeed's wrappers have .optimizer)."""
    from types import SimpleNamespace

    import pytest

    from llava_moslora.train.trainer import RatesKept

    trainer = SimpleNamespace(group_rates=[("the rest", 2e-4), ("mm_projector", 1e-3)])
    inner = SimpleNamespace(param_groups=[{"lr": 0.0, "initial_lr": 2e-4}, {"lr": 0.0, "initial_lr": 1e-3}])
    wrapped = SimpleNamespace(optimizer=SimpleNamespace(optimizer=inner))
    args = SimpleNamespace(process_index=1)
    RatesKept(trainer).on_train_begin(args, None, None, optimizer=wrapped)  # kept: nothing said, nothing raised
    inner.param_groups[1]["initial_lr"] = 2e-4  # the projector's rate replaced by the default
    with pytest.raises(RuntimeError, match=r"learning rates \[0.0002, 0.0002\], not the \[0.0002, 0.001\] given to "
                                           r"the rest, mm_projector"):
        RatesKept(trainer).on_train_begin(args, None, None, optimizer=wrapped)
