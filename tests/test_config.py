"""Pruning configs: a shared base, one class per method, validation messages, JSON round trip, dispatch."""

import dataclasses
import json

import pytest
import torch

from optimum_slimgpt import PruningConfig, SlimGPTConfig, SlimLLMConfig


def test_defaults_and_round_trip(tmp_path):
    c = SlimGPTConfig(pruning_ratio=0.3, schedule="uniform", dataset="c4", num_samples=64, seed=3)
    assert (c.num_samples, c.seqlen, c.damp_percent, c.schedule) == (64, 2048, 0.01, "uniform")
    assert SlimGPTConfig.from_dict(c.to_dict()) == c
    assert SlimGPTConfig.from_json_string(c.to_json_string()) == c
    c.to_json_file(tmp_path / "c.json")
    assert SlimGPTConfig.from_json_file(tmp_path / "c.json") == c
    c2 = SlimGPTConfig(schedule=[0.1, 0.2, 0.3])
    assert SlimGPTConfig.from_dict(c2.to_dict()).schedule == [0.1, 0.2, 0.3]


def test_each_method_config_carries_only_its_own_knobs():
    shared = {f.name for f in dataclasses.fields(PruningConfig)}
    gpt = {f.name for f in dataclasses.fields(SlimGPTConfig)} - shared
    llm = {f.name for f in dataclasses.fields(SlimLLMConfig)} - shared
    assert gpt == {"damp_percent", "ffn_max_group", "ffn_min_group", "compensate", "head_selection", "channel_selection",
                   "bias_compensation"}
    assert llm == {"recovery", "swap_search", "keep_lowest"}
    with pytest.raises(TypeError, match="compensate"):
        SlimLLMConfig(compensate=False)  # SlimLLM has no OBS update: the knob is refused, not ignored
    with pytest.raises(TypeError, match="shared base"):
        PruningConfig()


def test_from_dict_dispatches_on_the_method_name():
    c = SlimLLMConfig(pruning_ratio=0.4, swap_search=False, dataset="c4")
    d = c.to_dict()
    assert d["method"] == "slimllm"
    back = PruningConfig.from_dict(d)
    assert type(back) is SlimLLMConfig and back == c
    assert PruningConfig.for_method("slimgpt", pruning_ratio=0.1) == SlimGPTConfig(pruning_ratio=0.1)
    with pytest.raises(ValueError, match="got the config of SlimLLMConfig"):
        SlimGPTConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown pruning method 'foo'; registered: \\['flap', 'slimgpt', 'slimllm'"):
        PruningConfig.for_method("foo")


def test_method_argument_is_a_clear_error_naming_the_right_class():
    with pytest.raises(ValueError, match=r"method='slimllm' has its own config class: use SlimLLMConfig\(...\)"):
        SlimGPTConfig(method="slimllm")
    assert SlimGPTConfig(method="slimgpt") == SlimGPTConfig()  # naming its own method is harmless


def test_in_memory_datasets_are_described_not_serialised():
    c = SlimGPTConfig(dataset=torch.zeros(4, 16, dtype=torch.long))
    assert c.to_dict()["dataset"] == {"type": "token_ids", "shape": [4, 16]}
    c = SlimGPTConfig(dataset=["some private text"] * 3)
    assert "private" not in c.to_json_string()
    assert SlimGPTConfig.from_dict(c.to_dict()).dataset is None


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(pruning_ratio=1.0), ValueError, "0 <= pruning_ratio < 1"),
        (dict(pruning_ratio=-0.1), ValueError, "pruning_ratio"),
        (dict(pruning_ratio="0.2"), TypeError, "pruning_ratio must be a number"),
        (dict(schedule="exp"), ValueError, "schedule must be one of"),
        (dict(schedule=[0.1, 1.2]), ValueError, "explicit schedule"),
        (dict(num_samples=0), ValueError, "num_samples must be a positive integer"),
        (dict(seqlen=2.5), ValueError, "seqlen"),
        (dict(damp_percent=-1), ValueError, "damp_percent"),
        (dict(prune_heads=False, prune_ffn=False), ValueError, "nothing can be pruned"),
        (dict(method="foo"), ValueError, "unknown pruning method 'foo'"),
        (dict(dataset=3.5), TypeError, "dataset must be"),
        (dict(dataset=torch.zeros(5)), ValueError, "shape \\(samples, seqlen\\)"),
        (dict(dataset=[]), ValueError, "non-empty list of strings"),
        (dict(ffn_min_group=128, ffn_max_group=64), ValueError, "ffn_min_group"),
        (dict(head_selection="random"), ValueError, "head_selection"),
    ],
)
def test_validation_messages(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SlimGPTConfig(**kwargs)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(keep_lowest=1.0), ValueError, "keep_lowest must be in \\[0, 1\\)"),
    (dict(recovery="yes"), TypeError, "recovery must be a bool"),
    (dict(pruning_ratio=1.5), ValueError, "pruning_ratio"),
])
def test_slimllm_validation_messages(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SlimLLMConfig(**kwargs)


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown SlimGPTConfig keys"):
        SlimGPTConfig.from_dict({"pruning_ratio": 0.2, "bits": 4})


@pytest.mark.parametrize("cls, name", [(SlimGPTConfig, "compensate"), (SlimGPTConfig, "prune_heads"),
                                       (SlimGPTConfig, "prune_ffn"), (SlimGPTConfig, "offload_activations"),
                                       (SlimLLMConfig, "recovery"), (SlimLLMConfig, "swap_search")])
@pytest.mark.parametrize("value", ["False", "true", 0, 1, None])
def test_string_and_number_booleans_are_rejected(cls, name, value):
    from optimum_slimgpt import ConfigError

    with pytest.raises(ConfigError, match=f"{name} must be a bool") as info:
        cls(**{name: value})
    assert info.value.field == name
    with pytest.raises(ConfigError, match=f"{name} must be a bool"):  # also through from_dict (JSON files)
        cls.from_dict({"method": cls.method_name, name: value})


@pytest.mark.parametrize("kwargs, field", [
    (dict(pruning_ratio="0.2"), "pruning_ratio"), (dict(pruning_ratio=float("nan")), "pruning_ratio"),
    (dict(schedule_spread=float("inf")), "schedule_spread"), (dict(schedule=[0.1, float("nan")]), "schedule"),
    (dict(schedule=["0.1"]), "schedule"), (dict(seed=-1), "seed"), (dict(seed=True), "seed"),
    (dict(seed=1.0), "seed"), (dict(device=3), "device"), (dict(device="cuda:abc"), "device"),
    (dict(device="gpu"), "device"), (dict(meta={"x": float("nan")}), "meta"), (dict(meta=[1]), "meta"),
    (dict(dataset_split=""), "dataset_split"), (dict(dataset=" "), "dataset"), (dict(num_samples=True), "num_samples"),
    (dict(dataset=torch.tensor([[1, -2]])), "dataset"), (dict(damp_percent=float("nan")), "damp_percent"),
    (dict(method="nosuch"), "method"), (dict(channel_multiple="256"), "channel_multiple"),
    (dict(channel_multiple=0), "channel_multiple"), (dict(channel_multiple=True), "channel_multiple"),
    (dict(channel_multiple=64.0), "channel_multiple"), (dict(kv_head_multiple=0), "kv_head_multiple"),
    (dict(kv_head_multiple="auto"), "kv_head_multiple"), (dict(kv_head_multiple=2.0), "kv_head_multiple"),
])
def test_every_field_fails_with_one_exception_type(kwargs, field):
    """One type for every bad field: ConfigError, which is both a ValueError and a TypeError."""
    from optimum_slimgpt import ConfigError

    with pytest.raises(ConfigError) as info:
        SlimGPTConfig(**kwargs)
    assert info.value.field == field and isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_valid_devices_and_standard_json():
    assert SlimGPTConfig(device="cuda:1").device == "cuda:1"  # checked for existence at prune time, not here
    assert SlimGPTConfig(device=torch.device("cpu")).device == torch.device("cpu")
    cfg = SlimGPTConfig(meta={"note": "x", "n": 1.5})
    json.loads(cfg.to_json_string())
    cfg.meta["bad"] = float("inf")  # set after construction: never written as non-standard JSON
    with pytest.raises(ValueError):
        cfg.to_json_string()


def test_size_multiples_default_and_round_trip():
    """channel_multiple defaults to "auto" (resolved per layer by the planner), takes an int; kv_head_multiple
    defaults to 1; both survive to_dict/from_dict, and a record written before "auto" (channel_multiple=1) loads."""
    c = SlimGPTConfig()
    assert (c.channel_multiple, c.kv_head_multiple) == ("auto", 1)
    c = SlimGPTConfig(channel_multiple=64, kv_head_multiple=2)
    back = SlimGPTConfig.from_dict(json.loads(c.to_json_string()))
    assert (back.channel_multiple, back.kv_head_multiple) == (64, 2)
    assert SlimGPTConfig.from_dict({"method": "slimgpt", "channel_multiple": 1}).channel_multiple == 1
