"""A small ShapesVQA data root for the evaluation tests."""
import pytest


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    from llava_moslora.demo.synth import write_shapesvqa

    root = tmp_path_factory.mktemp("lmudata")
    write_shapesvqa(root, seed=1, num_pretrain=0, num_instruct=0, num_test=6, progress=False)
    return root
