"""--data_mixture: weights share out samples at random (within sampling error), counts are exact,
the same seed draws the same mixture, a source asked for more than it has starts over, and bad
shares are named."""
from collections import Counter

import pytest
from helpers import write_sources
from llava_moslora.data import DataError, LlavaDataset
from llava_moslora.data.mixture import Part, draw, mixture_size, parse_mixture
from llava_moslora.model import build_llava


def test_shares_parse_as_weights_or_counts_and_bad_ones_are_named():
    assert parse_mixture("a.json:0.7, dir/b.parquet:0.3,c.jsonl:2000") == [
        Part("a.json", weight=0.7), Part("dir/b.parquet", weight=0.3), Part("c.jsonl", count=2000)]
    assert parse_mixture("a.json:2.0") == [Part("a.json", weight=2.0)]  # a point: a weight
    for spec, message in [("a.json:0", "above 0"), ("a.json:-0.5", "above 0"), ("a.json", "needs a weight or count"),
                          ("a.json:lots", "not a number"), ("a.json:1,a.json:2", "named twice"), (",", "no sources")]:
        with pytest.raises(DataError, match=message):
            parse_mixture(spec)


def test_weights_share_out_the_weighted_sizes_within_sampling_error_and_counts_are_exact():
    parts, sizes = [Part("a", weight=0.7), Part("b", weight=0.3), Part("c", count=250)], [3000, 1000, 100]
    drawn = draw(parts, sizes, seed=0)
    counts = Counter(part for part, _ in drawn)
    assert len(drawn) == mixture_size(parts, sizes) == 4250
    # binomial(4000, 0.7): sd 29; 4 sd either way
    assert abs(counts[0] - 2800) < 4 * 29 and counts[0] + counts[1] == 4000 and counts[2] == 250
    assert drawn == draw(parts, sizes, seed=0) and drawn != draw(parts, sizes, seed=1)
    # a source asked for more than it has: every sample twice, then 50 of them a third time
    uses = Counter(index for part, index in drawn if part == 2)
    assert sorted(Counter(uses.values()).items()) == [(2, 50), (3, 50)]
    # asked for fewer: distinct samples
    few = [index for part, index in draw([Part("a", count=40)], [100], seed=3)]
    assert len(set(few)) == 40


@pytest.fixture
def sources(tmp_path):
    return write_sources(tmp_path, {"a.json": 30, "b.jsonl": 10})


def test_a_mixture_dataset_draws_from_its_sources_and_follows_left_out_samples(tiny_bases, sources):
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    parts = parse_mixture(f"{sources / 'a.json'}:0.5,{sources / 'b.jsonl'}:25")

    def build():
        return LlavaDataset(None, bundle.tokenizer, bundle.image_processor, "vicuna_v1", image_folder=sources,
                            num_image_tokens=bundle.recipe.num_image_tokens, mixture=parts, mixture_seed=7)
    data = build()
    counts = data.mixture_counts()
    assert len(data) == 55 and counts == {str(sources / "a.json"): 30, str(sources / "b.jsonl"): 25}
    ids = [data[i]["id"] for i in range(len(data))]
    assert sum(i.startswith("b-") for i in ids) == 25 and [build()[i]["id"] for i in range(len(data))] == ids
    assert len(data.samples) == 40 and len(data.modality_lengths) == 55
    position = next(i for i, s in enumerate(data.samples) if s.id == "b-3")
    data.exclude([position])  # as the start-up screen drops a bad sample: every draw of it goes
    assert "b-3" not in [data[i]["id"] for i in range(len(data))]
    assert data.mixture_counts()[str(sources / "b.jsonl")] == 25 - ids.count("b-3")


def test_data_path_and_mixture_together_are_refused():
    from llava_moslora.train.main import parse

    with pytest.raises(SystemExit, match="--data_path or --data_mixture, not both"):
        parse(["--data_path", "a.json", "--data_mixture", "a.json:1", "--output_dir", "out"])


def test_validate_data_checks_every_source_of_a_mixture_and_ids_clash_only_within_one(capsys, tiny_bases, tmp_path):
    """Two tables without ids both number their rows from 0: not duplicates. A repeat within one
    source still is; validate-data says what the mixture draws from each, as training would."""
    import datasets

    from llava_moslora.cli import main

    root = write_sources(tmp_path, {"a.json": 6})
    rows = [{"conversations": [{"from": "human", "value": f"Say {i}."}, {"from": "gpt", "value": f"{i}."}]}
            for i in range(4)]
    datasets.Dataset.from_list(rows).to_parquet(str(root / "b.parquet"))
    datasets.Dataset.from_list(rows).to_parquet(str(root / "c.parquet"))
    spec = f"{root / 'b.parquet'}:0.5,{root / 'c.parquet'}:0.5,{root / 'a.json'}:3"
    args = ["validate-data", "--data_mixture", spec, "--image_folder", str(root), "--num_workers", "0",
            "--model_name_or_path", tiny_bases["language_model"], "--vision_tower", tiny_bases["vision_tower"]]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "14 records: 14 valid" in out
    assert f"mixture: {root / 'a.json'}: 6 samples read, 3 drawn (count 3, seed 42)" in out
    drawn = [int(line.split(" samples read, ")[1].split()[0]) for line in out.splitlines() if " drawn (" in line]
    assert drawn[0] + drawn[1] == 8  # the weighted sources' sizes together, shared out at random
    (root / "a.json").write_text((root / "a.json").read_text().replace('"a-1"', '"a-0"'))
    assert main(args) == 1 and "duplicate_id" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--data_path", str(root / "a.json")])  # one or the other
