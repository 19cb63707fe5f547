"""DATA_MIXTURE through finetune.sh: it trains on the drawn mixture and says what each source gave."""
import json

import pytest

from helpers import STEADY, run_script, stage2_env, write_sources


@pytest.mark.slow
def test_finetune_trains_on_a_mixture_and_says_what_each_source_gave(stage1, tmp_path):
    sources = write_sources(tmp_path, {"a.json": 30, "b.jsonl": 10})
    out = tmp_path / "mixed"
    env = {**stage2_env(sources, stage1, out), "DATA_MIXTURE": f"{sources / 'a.json'}:0.7,{sources / 'b.jsonl'}:0.3",
           "IMAGE_FOLDER": str(sources), "EPOCHS": "1"}
    result = run_script("finetune.sh", env, *STEADY)
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert sum(metrics["mixture"].values()) == 40
    assert f"mixture: {sources / 'a.json'} {metrics['mixture'][str(sources / 'a.json')]} samples (weight 0.7)" \
        in result.stdout
