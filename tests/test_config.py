"""SlimGPTConfig: defaults, validation messages, JSON round trip."""

import pytest
import torch

from optimum_slimgpt import SlimGPTConfig


def test_defaults_and_round_trip(tmp_path):
    c = SlimGPTConfig(pruning_ratio=0.3, schedule="uniform", dataset="c4", num_samples=64, seed=3)
    assert (c.num_samples, c.seqlen, c.damp_percent, c.schedule) == (64, 2048, 0.01, "uniform")
    assert SlimGPTConfig.from_dict(c.to_dict()) == c
    assert SlimGPTConfig.from_json_string(c.to_json_string()) == c
    c.to_json_file(tmp_path / "c.json")
    assert SlimGPTConfig.from_json_file(tmp_path / "c.json") == c
    c2 = SlimGPTConfig(schedule=[0.1, 0.2, 0.3])
    assert SlimGPTConfig.from_dict(c2.to_dict()).schedule == [0.1, 0.2, 0.3]


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
        (dict(method="foo"), ValueError, "method must be one of"),
        (dict(dataset=3.5), TypeError, "dataset must be"),
        (dict(dataset=torch.zeros(5)), ValueError, "shape \\(samples, seqlen\\)"),
        (dict(dataset=[]), ValueError, "non-empty list of strings"),
        (dict(ffn_min_group=128, ffn_max_group=64), ValueError, "ffn_min_group"),
    ],
)
def test_validation_messages(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SlimGPTConfig(**kwargs)


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown SlimGPTConfig keys"):
        SlimGPTConfig.from_dict({"pruning_ratio": 0.2, "bits": 4})
