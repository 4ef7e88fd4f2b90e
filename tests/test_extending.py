"""A third-party pruning method, written the way a plugin would: a config subclass with its own knob, a method
class registered for it, and nothing else. It must prune, save and reload through the public API only."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from optimum_slimgpt import PruningConfig, SlimGPTPruner, get_adapter, get_method, register_method, save_pruned_model
from optimum_slimgpt.methods import HESSIAN, PruneResult, PruningMethod, unregister_method
from tolerances import assert_same_function, logits64

VOCAB = 96
CALIB = torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(0))
PROMPT = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))


@dataclass
class ToyNormConfig(PruningConfig):
    """Keep the heads and channels whose output-projection columns have the largest ``p``-norm."""

    method_name = "toy_norm"
    label = "toy column norm"
    p: float = 2.0

    def validate(self) -> None:
        super().validate()
        if not self.p > 0:
            raise ValueError(f"p must be > 0, got {self.p!r}")


class ToyNormMethod(PruningMethod):
    """Attention: no statistics (no calibration pass for it). FFN: the input Hessian, whose diagonal weights the
    column norms (so the observer's accumulator must reach the task)."""

    def __init__(self) -> None:
        self.seen_ffn_hessians = 0

    def observers(self, part, config):
        return {"hessian": HESSIAN} if part == "ffn" else {}

    def prune_attention(self, task):
        assert task.stats == {}
        kv, m = task.options[0]
        per_kv = task.num_heads // task.num_kv_heads
        norms = task.W.reshape(task.W.shape[0], task.num_heads, task.head_dim).norm(p=task.config.p, dim=(0, 2))
        groups = norms.reshape(task.num_kv_heads, per_kv)
        kept_kv = sorted(groups.sum(1).topk(kv).indices.tolist())
        kept = [g * per_kv + int(j) for g in kept_kv for j in sorted(groups[g].topk(m).indices.tolist())]
        W = task.W.clone().reshape(task.W.shape[0], task.num_heads, task.head_dim)
        W[:, [h for h in range(task.num_heads) if h not in kept]] = 0
        return PruneResult(kept, W.reshape(task.W.shape), kept_kv=kept_kv, option=(kv, m))

    def prune_ffn(self, task):
        H = task.stats["hessian"].hessian()
        assert H.shape == (task.W.shape[1], task.W.shape[1])
        self.seen_ffn_hessians += 1
        score = task.W.norm(p=task.config.p, dim=0) * H.diagonal().clamp_min(0).sqrt()
        n_keep = task.W.shape[1] - task.num_remove
        kept = sorted(score.topk(n_keep).indices.tolist())
        W = torch.zeros_like(task.W)
        W[:, kept] = task.W[:, kept]
        return PruneResult(kept, W)


@pytest.fixture()
def toy_method():
    method_cls = register_method(ToyNormConfig)(ToyNormMethod)
    yield get_method(ToyNormConfig())
    unregister_method(ToyNormConfig)
    assert method_cls.config_class is ToyNormConfig


def _tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64)).eval()


def test_registered_method_prunes_saves_and_reloads(toy_method, tmp_path):
    from transformers import AutoModelForCausalLM

    # channel_multiple=1: every layer then loses FFN channels (one FFN Hessian each, counted below); with "auto"
    # this 128-channel FFN steps by 32 and layer 0 keeps all its channels (no FFN task there)
    config = PruningConfig.for_method("toy_norm", pruning_ratio=0.3, p=1.0, dataset=None, num_samples=8, seqlen=32,
                                      channel_multiple=1)
    assert type(config) is ToyNormConfig and config.p == 1.0
    assert PruningConfig.from_dict(config.to_dict()) == config  # the registry dispatches from_dict too
    with pytest.raises(ValueError, match="p must be > 0"):
        ToyNormConfig(p=0.0)

    model = _tiny()
    dense_params = sum(p.numel() for p in model.parameters())
    pruner = SlimGPTPruner(config)
    pruner.prune_model(model, calibration=CALIB)
    assert toy_method.seen_ffn_hessians == 3
    assert abs(pruner.summary.achieved_ratio - 0.3) < 0.05
    assert sum(p.numel() for p in model.parameters()) < dense_params
    adapter = get_adapter(model)
    for block, lp in zip(adapter.get_blocks(model), pruner.plan.layers):
        lay = adapter.head_layout(block, model.config)
        assert (lay.num_heads, lay.num_kv_heads, adapter.num_channels(block)) == (lp.heads, lp.kv_heads, lp.channels)
    record = model.config.pruning_config
    assert record["pruning_method"] == "toy_norm" and record["config"]["p"] == 1.0

    ref = logits64(model, PROMPT)
    res = save_pruned_model(model, tmp_path / "toy")
    loaded = AutoModelForCausalLM.from_pretrained(res.path).eval()
    assert_same_function(logits64(loaded, PROMPT), ref)
    assert loaded.config.pruning_config["pruning_method"] == "toy_norm"


def test_unregistered_method_is_refused(tmp_path):
    with pytest.raises(TypeError, match="no pruning method is registered for ToyNormConfig"):
        SlimGPTPruner(ToyNormConfig(dataset=None)).prune_model(_tiny(), calibration=CALIB)
    with pytest.raises(ValueError, match="unknown pruning method 'toy_norm'"):
        PruningConfig.for_method("toy_norm")
