"""train_metrics.json: the peak memory is the training phase's (on the CPU the RSS high-water mark
is reset when training begins, so the copies made while loading do not count); real and processed
tokens are counted and carried over a resume."""
import resource
import sys

import pytest
import torch

from llava_moslora.train.metrics import peak_memory, reset_peak_memory

MB = 2 ** 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reset uses Linux's /proc/self/clear_refs")
def test_peak_memory_counts_from_the_reset():
    loading = torch.ones(50_000_000)  # 200 MB, touched, then freed (as a load-time copy is)
    del loading
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reset_peak_memory()
    after_reset, measure = peak_memory()
    assert measure == "cpu peak rss during training"
    assert after_reset < lifetime - 150 * MB  # the freed 200 MB are no longer the peak
    training = torch.ones(50_000_000)
    peak, _ = peak_memory()
    assert peak >= after_reset + 190 * MB
    del training


def test_the_record_counts_real_and_processed_tokens_and_keeps_them_over_a_resume(tmp_path):
    import torch

    from llava_moslora.train.metrics import RunRecord

    from llava_moslora.data import LlavaCollator

    def sample(name, length):
        return {"id": name, "input_ids": torch.arange(length), "labels": torch.arange(length)}

    collate = LlavaCollator(pad_token_id=0, with_ids=True)
    first = collate([sample("a", 3), sample("b", 2)])
    assert first["token_counts"] == [5, 6]  # 5 real tokens, 2 rows padded to 3
    record = RunRecord()
    record.update(first["sample_ids"], *first["token_counts"])
    record.save(tmp_path, rank=0)
    resumed = RunRecord()
    resumed.load(tmp_path, rank=0)
    resumed.update(["c"], 3, 3)
    assert (resumed.tokens_before + resumed.tokens_this_process, resumed.processed_before
            + resumed.processed_this_process) == (8, 9)
