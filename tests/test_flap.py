"""FLAP as a baseline: fluctuation scores, global adaptive allocation, bias compensation; and the affine SlimGPT
option end to end (prune, save, reload)."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch

from optimum_slimgpt import FLAPConfig, PruningConfig, SlimGPTConfig, SlimGPTPruner, get_adapter, save_pruned_model
from optimum_slimgpt.config import ConfigError
from optimum_slimgpt.methods import FFNTask, get_method
from optimum_slimgpt.solvers import HessianAccumulator, LayerGeometry
from tolerances import assert_same_function, gamma, logits64, matmul_bound

from optimum_slimgpt.solvers.flap import (
    FlapLayerScores,
    fluctuation_scores,
    global_allocation,
    head_scores,
    select_heads_by_score,
    standardize,
)


def test_fluctuation_score_is_variance_times_squared_column_norm():
    W = torch.tensor([[1.0, 0.0, 2.0], [1.0, 3.0, 0.0]])  # column norms² 2, 9, 4
    var = torch.tensor([0.5, 1.0, 0.0])
    assert fluctuation_scores(W, var).tolist() == [1.0, 9.0, 0.0]
    assert fluctuation_scores(W, var, square=True).tolist() == [1.0, 81.0, 0.0]
    z = standardize(torch.tensor([1.0, 2.0, 3.0]))
    assert z.tolist() == [-1.0, 0.0, 1.0]  # mean 2, unbiased std 1
    assert head_scores(torch.tensor([1.0, 3.0, -2.0, 0.0]), 2).tolist() == [2.0, -1.0]


def test_flap_removes_constant_channels_and_the_bias_makes_the_layer_exact():
    """A constructed case with a known answer: channels 1, 4 and 6 are constant on every token (variance 0), so
    FLAP removes exactly them, and the mean shift ``b + W[:, S] μ_S`` reproduces the dense outputs exactly."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 8, generator=g)
    consts = {1: 3.0, 4: -2.0, 6: 0.5}
    for j, v in consts.items():
        X[:, j] = v
    W = torch.randn(5, 8, generator=g)
    b = torch.randn(5, generator=g)
    acc = HessianAccumulator(8)
    acc.add(X)
    cfg = FLAPConfig(dataset=None, global_allocation=False)
    task = FFNTask(layer=0, W=W, bias=b, stats={"hessian": acc}, config=cfg, name="down_proj", num_remove=3)
    res = get_method(cfg).prune_ffn(task)
    assert res.kept == [0, 2, 3, 5, 7]
    assert torch.equal(res.W[:, res.kept], W[:, res.kept]) and float(res.W[:, [1, 4, 6]].abs().max()) == 0
    # exact in exact arithmetic; in float32 each side is within the rounding bound of its product (tolerances.py)
    S = [1, 4, 6]
    Xa, Wa, Ra = (torch.cat([X, torch.ones(400, 1)], 1), torch.cat([W, b[:, None]], 1),
                  torch.cat([res.W, res.bias[:, None]], 1))
    bound = (matmul_bound(Xa, Wa.T) + matmul_bound(Xa, Ra.T)
             + gamma(len(S) + 1) * (b.abs() + W[:, S].abs() @ X[0, S].abs()).double())
    assert ((X @ res.W.T + res.bias).double() - (X @ W.T + b).double()).abs().le(bound).all()
    # the reported (relative) error is 0 up to rounding: the moments (N = 400 tokens summed in float32) and the
    # quadratic form of D = [W0 − W | b0 − b] are each within γ of |D| M |D|ᵀ, M the moments of |x| and 1
    D = (Wa - Ra).double()
    M = 2 * Xa.double().abs().T @ Xa.double().abs() / 400
    base = float(((Wa.double() @ (2 * Xa.double().T @ Xa.double() / 400)) * Wa.double()).sum())
    assert res.error <= gamma(400 + 2 * 9 * 5) * float(((D.abs() @ M) * D.abs()).sum()) / base
    # without bias compensation the removed means are lost
    res = get_method(cfg).prune_ffn(FFNTask(layer=0, W=W, bias=b, stats={"hessian": acc}, name="down_proj",
                                            config=FLAPConfig(dataset=None, bias_compensation=False), num_remove=3))
    assert res.bias is None and res.error > 0.01


def test_gqa_head_choice_keeps_the_best_groups_and_heads():
    s = torch.tensor([5.0, -1.0, 0.0, 1.0, 1.0, 1.0, -3.0, 4.0, -2.0])  # 3 KV groups of 3 query heads
    kept, kv, opt = select_heads_by_score(s, 3, [(2, 1)])
    assert (kept, kv, opt) == ([0, 7], [0, 2], (2, 1))  # groups' best heads: 5, 1, 4
    kept, kv, opt = select_heads_by_score(s, 3, [(1, 3), (3, 1)])
    assert (kept, kv, opt) == ([0, 3, 7], [0, 1, 2], (3, 1))  # 5+1+4 = 10 beats the best whole group, 3
    # brute force: no other (2 groups x 2 heads) choice has a larger kept score
    kept, kv, _ = select_heads_by_score(s, 3, [(2, 2)])
    best = max(sum(sorted(s[3 * a : 3 * a + 3].tolist())[-2:]) + sum(sorted(s[3 * c : 3 * c + 3].tolist())[-2:])
               for a, c in itertools.combinations(range(3), 2))
    assert float(s[kept].sum()) == best


def test_global_allocation_known_answer_and_brute_force():
    """Two layers; a head carries 4 parameters, a channel 1 (``params_per_head=4``, no KV cost here). The units
    ranked together: layer 1's heads and channels score lowest, so it loses the most."""
    geom = LayerGeometry(num_heads=2, num_kv_heads=2, head_dim=1, channels=4, params_per_head=4,
                         params_per_kv_head=0, params_per_channel=1)
    scores = [FlapLayerScores(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.5, 2.5, 3.5])),
              FlapLayerScores(torch.tensor([-1.0, 0.2]), torch.tensor([-2.0, -1.5, 0.1, 0.3]))]
    total = 2 * (2 * 4 + 4)
    plan = global_allocation(scores, [geom, geom], 0.25)  # keep 18 of 24
    # threshold between -1.0 and 0.1: layer 1 drops its head -1.0 and channels -2.0, -1.5 -> 24 - 4 - 2 = 18
    assert [(p.heads, p.channels) for p in plan.layers] == [(2, 4), (1, 2)]
    assert plan.params_after == 18 and plan.achieved_ratio == pytest.approx(0.25)
    # against every threshold: the bisection finds the one whose kept parameters are closest to the target
    for ratio in (0.1, 0.3, 0.5, 0.7):
        plan = global_allocation(scores, [geom, geom], ratio)
        pool = sorted({float(x) for s in scores for x in torch.cat([s.heads, s.channels])})
        best = min(abs(sum(max(1, int((s.heads > t).sum())) * 4 + max(1, int((s.channels > t).sum()))
                           for s in scores) - total * (1 - ratio)) for t in [-9.0] + pool)
        assert abs(plan.params_after - total * (1 - ratio)) == best


def test_flap_config_and_registration():
    cfg = PruningConfig.for_method("flap", pruning_ratio=0.3)
    assert isinstance(cfg, FLAPConfig) and cfg.global_allocation and cfg.bias_compensation
    assert PruningConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="global_allocation"):
        FLAPConfig(global_allocation="yes")
    with pytest.raises(ConfigError, match="bias_compensation"):
        SlimGPTConfig(bias_compensation=1)
    assert PruningConfig.from_dict(SlimGPTConfig(bias_compensation=True).to_dict()).bias_compensation is True


def _calib(stream, n=16, seqlen=128, offset=20_000):
    return torch.stack([stream[offset + i * seqlen : offset + (i + 1) * seqlen] for i in range(n)])


def _loss(model, stream):
    x = stream[:4096].view(8, 512)
    with torch.no_grad():
        return float(model(x, labels=x).loss)


def _logits(model, stream):
    return logits64(model, stream[:256].view(2, 128))  # same-function checks in float64 (tests/tolerances.py)


def test_stories_flap_and_affine_end_to_end_save_and_reload(stories, stories_stream, tmp_path):
    """stories260K at 40%: FLAP's global plan (sizes differ by layer, the budget is met) and SlimGPT + affine OBS
    compensation; both carry output biases that save (per_layer; and as a plain Llama with attention_bias /
    mlp_bias) and reload to equal logits. SlimGPT + affine beats FLAP on held-out text."""
    from transformers import AutoModelForCausalLM

    calib = _calib(stories_stream)
    common = dict(dataset=None, num_samples=16, seqlen=128, batch_size=8, pruning_ratio=0.4)
    flap = SlimGPTPruner(FLAPConfig(**common))
    m_flap = flap.prune_model(copy.deepcopy(stories), calibration=calib)
    s = flap.summary
    assert abs(s.achieved_ratio - 0.4) < 0.03 and len({r.channels[1] for r in s.layers}) > 1
    adapter = get_adapter(m_flap)
    for block, lp in zip(adapter.get_blocks(m_flap), flap.plan.layers):
        assert adapter.num_channels(block) == lp.channels and adapter.mlp_out_proj(block).bias is not None
    affine = SlimGPTPruner(SlimGPTConfig(bias_compensation=True, **common))
    m_aff = affine.prune_model(copy.deepcopy(stories), calibration=calib)
    assert _loss(m_aff, stories_stream) < _loss(m_flap, stories_stream)

    for model, name in ((m_aff, "affine"), (m_flap, "flap")):
        ref = _logits(model, stories_stream)
        res = save_pruned_model(model, tmp_path / name, export_format="per_layer")
        assert json.loads((res.path / "config.json").read_text())["pruned_out_bias"] is True
        loaded = AutoModelForCausalLM.from_pretrained(res.path, trust_remote_code=True).eval()
        assert_same_function(_logits(loaded, stories_stream), ref)
    # uniform sizes (uniform schedule, channels in multiples of 4): a plain LlamaForCausalLM holds the biases
    uni = SlimGPTPruner(SlimGPTConfig(bias_compensation=True, schedule="uniform", channel_multiple=4,
                                      **dict(common, pruning_ratio=0.3)))
    m_uni = uni.prune_model(copy.deepcopy(stories), calibration=calib)
    ref = _logits(m_uni, stories_stream)
    res = save_pruned_model(m_uni, tmp_path / "uniform")
    assert res.format == "uniform"
    loaded = AutoModelForCausalLM.from_pretrained(res.path).eval()
    assert type(loaded).__name__ == "LlamaForCausalLM" and loaded.config.mlp_bias
    assert_same_function(_logits(loaded, stories_stream), ref)
