"""Ranks of a multi-GPU evaluation wait for each other up to EVAL_TIMEOUT_MINUTES (180), not
NCCL's 10 minutes: rank 0 scores with judges while the others wait at the barrier."""
from datetime import timedelta

import pytest
import torch

from llava_moslora.evaluation import ranks


@pytest.mark.parametrize("setting, expected", [(None, timedelta(minutes=180)), ("30", timedelta(minutes=30)),
                                               ("2.5", timedelta(minutes=2.5))])
def test_the_process_group_gets_the_timeout(setting, expected, monkeypatch):
    given = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    if setting is None:
        monkeypatch.delenv("EVAL_TIMEOUT_MINUTES", raising=False)
    else:
        monkeypatch.setenv("EVAL_TIMEOUT_MINUTES", setting)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kwargs: given.update(kwargs))
    assert ranks.init_distributed() == (1, 2)
    assert given["timeout"] == expected


def test_a_timeout_that_is_no_number_is_said(monkeypatch):
    monkeypatch.setenv("EVAL_TIMEOUT_MINUTES", "an hour")
    with pytest.raises(ValueError, match="EVAL_TIMEOUT_MINUTES=an hour: give a number of minutes"):
        ranks.collective_timeout()
