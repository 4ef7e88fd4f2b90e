"""The pruner end to end on real weights (stories260K, SmolLM2-135M) and on bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers import WIKITEXT_DIR
from tolerances import assert_same_function, logits64
from optimum_slimgpt import SlimGPTConfig, SlimGPTPruner, get_adapter
from optimum_slimgpt.evaluation import perplexity
from optimum_slimgpt.solvers import prune_channels, prune_heads


def _calib(stream, n=16, seqlen=128, offset=20_000):
    return torch.stack([stream[offset + i * seqlen : offset + (i + 1) * seqlen] for i in range(n)])


def _cfg(**kw):
    base = dict(dataset=None, num_samples=16, seqlen=128, batch_size=8)
    base.update(kw)
    return SlimGPTConfig(**base)


def _block_params(model):
    adapter = get_adapter(model)
    total = 0
    for b in adapter.get_blocks(model):
        for m in (adapter.attention(b), adapter.mlp(b)):
            total += sum(p.numel() for n, p in m.named_parameters() if "norm" not in n)
    return total


def _logits(model, x):
    return logits64(model, x)  # same-function checks run in float64 (tests/tolerances.py)


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_stories_ratio_and_sizes_follow_the_plan(stories, stories_stream, ratio):
    before = _block_params(stories)
    pruner = SlimGPTPruner(_cfg(pruning_ratio=ratio))
    model = pruner.prune_model(stories, calibration=_calib(stories_stream))
    after = _block_params(model)
    adapter = get_adapter(model)
    for block, lp in zip(adapter.get_blocks(model), pruner.plan.layers):
        lay = adapter.head_layout(block, model.config)
        assert (lay.num_heads, lay.num_kv_heads, adapter.num_channels(block)) == (lp.heads, lp.kv_heads, lp.channels)
        assert lay.num_heads % lay.num_kv_heads == 0
    assert after == pruner.plan.params_after == pruner.summary.block_params_after
    # within one head or channel of the request: the largest single step of the rounding is one KV
    # group (2 query heads + 1 KV head here)
    hidden, hd = 64, 8
    one_group = 2 * (2 * hidden * hd) + 2 * hidden * hd
    assert abs((before - after) - ratio * before) <= one_group
    assert abs(pruner.summary.achieved_ratio - ratio) < 0.03
    assert model.config.pruning_config["layers"][0]["intermediate_size"] == pruner.plan.layers[0].channels


def test_physical_equals_masked(stories, stories_stream):
    calib = _calib(stories_stream)
    masked = copy.deepcopy(stories)
    pruner = SlimGPTPruner(_cfg(pruning_ratio=0.35), mask_only=True)
    pruner.prune_model(masked, calibration=calib)
    physical = copy.deepcopy(masked)
    adapter = get_adapter(physical)
    for block, kept in zip(adapter.get_blocks(physical), pruner.kept):
        adapter.prune_heads(block, physical.config, kept["heads"], kept["kv_heads"])
        adapter.prune_channels(block, kept["channels"])
    x = stories_stream[:256].view(2, 128)
    ref, got, dense = _logits(masked, x), _logits(physical, x), _logits(stories, x)
    assert sum(p.numel() for p in physical.parameters()) < sum(p.numel() for p in masked.parameters())
    assert (ref - dense).abs().max() > 1e-2  # the check is not vacuous
    assert_same_function(got, ref)
    # and the pruner's own physical path gives the same model as masking + slicing (the same float32 solves on
    # the same inputs: measured bit-identical at 1 and 2 threads)
    direct = SlimGPTPruner(_cfg(pruning_ratio=0.35)).prune_model(copy.deepcopy(stories), calibration=calib)
    assert_same_function(_logits(direct, x), ref)


def test_compensation_lowers_reconstruction_error_on_real_activations(stories, stories_stream):
    """||WX - ŴX||² with and without the OBS update, on inputs captured from stories260K."""
    layer = stories.model.layers[2]
    captured = {}
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: captured.setdefault("o", []).append(a[0])),
        layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: captured.setdefault("down", []).append(a[0])),
    ]
    with torch.no_grad():
        stories(_calib(stories_stream, n=8))
    for h in hooks:
        h.remove()
    Xo = torch.cat(captured["o"]).reshape(-1, 64)
    Xd = torch.cat(captured["down"]).reshape(-1, 172)
    Ho, Hd = 2 * Xo.T @ Xo / len(Xo), 2 * Xd.T @ Xd / len(Xd)
    Wo, Wd = layer.self_attn.o_proj.weight.detach(), layer.mlp.down_proj.weight.detach()

    def err(W0, W, X):
        return float(((X @ W0.T - X @ W.T) ** 2).sum())

    for mode in ("obs", "obs_official"):
        kw = dict(num_heads=8, num_kv_heads=4, head_dim=8, options=[(3, 2)], mode=mode)
        comp = prune_heads(Wo, Ho, compensate=True, **kw)
        plain = prune_heads(Wo, Ho, compensate=False, **kw)
        assert err(Wo, comp.W, Xo) < 0.8 * err(Wo, plain.W, Xo)
    comp = prune_channels(Wd, Hd, num_remove=60, compensate=True)
    plain = prune_channels(Wd, Hd, num_remove=60, compensate=False)
    assert err(Wd, comp.W, Xd) < 0.8 * err(Wd, plain.W, Xd)
    # OBS selection beats magnitude selection (both without compensation) on real data
    mag = prune_channels(Wd, None, num_remove=60, mode="magnitude", compensate=False)
    assert err(Wd, plain.W, Xd) < err(Wd, mag.W, Xd)


def test_seed_decides_the_calibration_windows(stories):
    """Calibrating from text: the seed picks the windows, so the same seed gives the same weights (bit for bit)
    and another seed other weights."""
    from helpers import TINYSTORIES_TXT, tok512_tokenizer

    tok = tok512_tokenizer()
    docs = [p for p in TINYSTORIES_TXT.read_text(encoding="utf-8")[:40_000].split("\n") if p.strip()]

    def prune(seed):
        cfg = SlimGPTConfig(pruning_ratio=0.3, dataset=docs, num_samples=8, seqlen=64, batch_size=8, seed=seed)
        return SlimGPTPruner(cfg).prune_model(copy.deepcopy(stories), tok).state_dict()

    a, b, c = prune(0), prune(0), prune(1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    changed = [k for k in a if a[k].shape != c[k].shape or not torch.equal(a[k], c[k])]
    assert len(changed) > len(a) // 4, changed  # the compensated weights of (nearly) every block differ


def _heldout_loss(model, stream):
    x = stream[:2048].view(8, 256)  # calibration starts at token 20,000
    with torch.no_grad():
        return float(model(x, labels=x).loss)


def test_obs_beats_no_compensation_beats_magnitude(stories, stories_stream):
    """Model-level ordering at 30% on held-out TinyStories: SlimGPT (OBS selection + compensation) < the same
    selection without compensation < structured magnitude."""
    calib = _calib(stories_stream)
    losses = {}
    for name, kw in {"slimgpt": {}, "nocomp": dict(compensate=False),
                     "magnitude": dict(compensate=False, head_selection="magnitude", channel_selection="magnitude")}.items():
        model = SlimGPTPruner(_cfg(pruning_ratio=0.3, **kw)).prune_model(copy.deepcopy(stories), calibration=calib)
        losses[name] = _heldout_loss(model, stories_stream)
    dense = _heldout_loss(stories, stories_stream)
    assert dense < losses["slimgpt"] < losses["nocomp"] < losses["magnitude"], (dense, losses)
    # margins far above float noise (measured: dense 1.306, then 2.394 / 2.940 / 3.474)
    assert losses["nocomp"] - losses["slimgpt"] > 0.25 and losses["magnitude"] - losses["nocomp"] > 0.25, losses


def test_pruned_model_generates(stories, stories_stream):
    model = SlimGPTPruner(_cfg(pruning_ratio=0.3)).prune_model(stories, calibration=_calib(stories_stream))
    out = model.generate(torch.tensor([[1]]), max_new_tokens=20, do_sample=False)
    assert out.shape == (1, 21)
    x = stories_stream[:512].view(4, 128)
    with torch.no_grad():
        loss = model(x, labels=x).loss
    assert math.isfinite(float(loss)) and float(loss) < 3.0


# ----------------------------------------------------------------------------------- bad input
def _tiny_llama(layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_bad_input_errors():
    calib = torch.randint(0, 64, (4, 16))
    with pytest.raises(ValueError, match="pruning_ratio"):
        SlimGPTPruner(SlimGPTConfig(pruning_ratio=1.5))
    # unsupported architecture
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(TypeError, match=r"unsupported architecture.*bert.*Supported model types: .*llama"):
        SlimGPTPruner(_cfg()).prune_model(bert, calibration=calib)
    # NaN in weights
    model = _tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"model.layers.1.mlp.up_proj.weight.*NaN"):
        SlimGPTPruner(_cfg()).prune_model(model, calibration=calib)
    # no decoder blocks
    empty = _tiny_llama(layers=0)
    with pytest.raises(ValueError, match="no decoder blocks"):
        SlimGPTPruner(_cfg()).prune_model(empty, calibration=calib)
    # empty calibration tensor / wrong shape
    with pytest.raises(ValueError, match="non-empty"):
        SlimGPTPruner(_cfg()).prune_model(_tiny_llama(), calibration=torch.zeros(0, 16, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        SlimGPTPruner(_cfg()).prune_model("meta-llama/Llama-2-7b", calibration=calib)


@pytest.mark.parametrize("multiple", [2, 4])
def test_kv_head_multiple_holds_on_every_pruned_layer(stories, stories_stream, multiple):
    """stories260K (8 heads on 4 KV heads) pruned 50% with kv_head_multiple=N: every layer's pruned attention has a
    multiple of N KV heads and of N query heads (what vLLM's tensor parallelism of degree N splits), the sizes are
    the plan's, and the ratio is still met within one rounding step (one layer's FFN multiple, 4 channels of 172,
    or one KV group: 2 query heads and their KV head)."""
    before = _block_params(stories)
    pruner = SlimGPTPruner(_cfg(pruning_ratio=0.5, kv_head_multiple=multiple))
    model = pruner.prune_model(stories, calibration=_calib(stories_stream))
    adapter = get_adapter(model)
    kv = []
    for block, lp in zip(adapter.get_blocks(model), pruner.plan.layers):
        lay = adapter.head_layout(block, model.config)
        assert (lay.num_heads, lay.num_kv_heads) == (lp.heads, lp.kv_heads)
        assert lay.num_kv_heads % multiple == 0 and lay.num_heads % multiple == 0
        kv.append(lay.num_kv_heads)
    assert min(kv) < 4 or multiple == 4  # the constraint binds where KV heads go
    hidden, hd = 64, 8
    step = max(4 * 3 * hidden, 2 * (2 * hidden * hd) + 2 * hidden * hd)
    assert abs((before - _block_params(model)) - 0.5 * before) <= step


@pytest.mark.parametrize("method", ["slimgpt", "flap"])
def test_impossible_kv_head_multiple_is_refused_before_any_work(method):
    """kv_head_multiple=3 on 2 KV heads: one clear ValueError before any forward (FLAP too, whose plan needs a
    dense pass), the model untouched."""
    from optimum_slimgpt import PruningConfig

    model = _tiny_llama()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = PruningConfig.for_method(method, pruning_ratio=0.3, dataset=None, num_samples=4, seqlen=16,
                                   kv_head_multiple=3)
    calls = []
    model.model.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="kv_head_multiple=3 does not divide .*layer 0 has 2"):
        SlimGPTPruner(cfg).prune_model(model, calibration=torch.randint(0, 64, (4, 16)))
    assert not calls and all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_calibration_text_shorter_than_a_window(smollm2):
    _, tok = smollm2
    model = _tiny_llama()
    cfg = SlimGPTConfig(dataset=["A single short sentence."], num_samples=4, seqlen=48)
    with pytest.raises(ValueError, match="calibration text is too short"):
        SlimGPTPruner(cfg).prune_model(model, tok)


# ----------------------------------------------------------------------------------- SmolLM2
@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_smollm2_ratio_within_half_a_point(smollm2, ratio):
    model, _ = smollm2
    plan = SlimGPTPruner(SlimGPTConfig(pruning_ratio=ratio)).plan_model(model)
    assert abs(plan.achieved_ratio - ratio) < 0.005
    assert plan.params_before == _block_params(model)
    assert len(plan.layers) == 30
    # the default channel_multiple="auto": SmolLM2's FFN is 1536 = 6 x 256, so every width is a multiple of 256
    # (llama.cpp's K-quants take the pruned ffn_down rows whole)
    assert all(lp.channel_multiple == 256 and lp.channels % 256 == 0 for lp in plan.layers)
    assert len({lp.channels for lp in plan.layers}) > 1


def _ppl(model, ids, seqlen=512):
    return perplexity(model, None, ids, seqlen=seqlen, batch_size=4, show_progress=False)


def test_smollm2_20_percent_perplexity_quick(smollm2, smollm2_pruned20):
    """SlimGPT at 20% on 8 x 256 WikiText-2 validation tokens keeps SmolLM2's perplexity on 1,536 test tokens below
    2.5x dense. Measured (1 thread; 2 threads agree to 4e-6 relative): dense 29.05, pruned 56.15 (1.93x); the same
    prune with calibration seeds 1, 2, 3: 52.59, 57.11 (1.97x), 52.20; without OBS compensation (``compensate=False``)
    121.9 (4.2x), magnitude selection without compensation 30,715. The bound 2.5x leaves every calibration draw tried
    a 27% margin (2x would leave 57.11 only 1.7%, too close for another CPU's rounding to move the greedy choices)
    and still fails the prune without compensation by far. (With 16 x 256 calibration tokens, the fixture's before: pruned 48.25,
    without compensation 136.2; 46.91 with channel_multiple=1, the default before "auto".)"""
    (dense_model, tok), (model, _, pruner) = smollm2, smollm2_pruned20
    test_rows = (WIKITEXT_DIR / "wiki.test.raw.nonempty-crlf.txt").read_text(encoding="utf-8").split("\r\n")
    ids = tok("\n\n".join(test_rows[:200]), add_special_tokens=False, return_tensors="pt").input_ids[0][: 3 * 512]
    dense, pruned = _ppl(dense_model, ids), _ppl(model, ids)
    assert abs(pruner.summary.achieved_ratio - 0.2) < 0.005
    assert math.isfinite(pruned) and dense < pruned < 2.5 * dense, (dense, pruned)
