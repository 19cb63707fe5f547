import pytest

from llava_moslora.adapters import AdapterConfig


@pytest.mark.parametrize("kwargs, message", [
    (dict(r=0), "r must be a positive integer"),
    (dict(r=-4), "r must be a positive integer"),
    (dict(kind="dora"), "unknown adapter kind 'dora'"),
    (dict(kind="moslora", mixer_init="butterfly", r=5), "butterfly.*even r"),
    (dict(kind="moslora", mixer_init="random"), "unknown mixer_init"),
    (dict(kind="moelora", num_experts=4, top_k=5), r"top_k must be in \[1, num_experts=4\]"),
    (dict(kind="moelora", top_k=0), "top_k must be in"),
    (dict(kind="moelora", num_experts=0, top_k=1), "num_experts must be positive"),
    (dict(gate_rescale="cube"), "unknown gate_rescale"),
    (dict(alpha=0), "alpha must be a positive"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(load_balance_coef=-1.0), "load_balance_coef must be >= 0"),
    (dict(target_modules=3), "target_modules must be"),
])
def test_invalid_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**kwargs)


def test_scaling_and_round_trip():
    config = AdapterConfig(kind="moslora", r=16, alpha=32, target_modules=("q_proj", "v_proj"))
    assert config.scaling == 2.0
    assert AdapterConfig(r=16, alpha=32, use_rslora=True).scaling == 8.0
    assert config.target_modules == ["q_proj", "v_proj"]
    assert AdapterConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown AdapterConfig fields: \\['rank'\\]"):
        AdapterConfig.from_dict({"rank": 4})


def test_defaults_follow_the_papers():
    assert AdapterConfig().mixer_init == "kaiming"
    moe = AdapterConfig(kind="moelora")
    assert (moe.num_experts, moe.top_k, moe.load_balance_coef) == (20, 10, 0.0)
