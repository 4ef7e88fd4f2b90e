"""Family adapters: every registered family pruned end to end on a tiny random model (CPU, seconds).

For each family: the real pruner at 30 % -> the in-memory model runs (forward, greedy ``generate`` with
a KV cache) and its module shapes match the plan; the parameter counts of the adapter's geometry match
the actual modules; and the masked model (``mask_only=True``) computes the same logits as its physically
sliced copy. Plus: the registry (unsupported models fail with a ``TypeError`` naming the supported
families, user-registered adapters) and Phi-3's per-layer config view.

Attention: the default ``sdpa`` everywhere except Gemma 2, which is built with ``eager`` because only the
eager attention applies ``attn_logit_softcapping`` (sdpa would silently drop it; transformers also picks
eager for Gemma 2 by default).
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache

import pytest
import torch
import transformers
from torch import nn

from optimum_slimgpt import PruningConfig, SlimGPTPruner, get_adapter, register_family, supported_model_types
from optimum_slimgpt.families import FamilyAdapter, LayerConfigView, unregister_family
from optimum_slimgpt.saving import ExportError, save_pruned_model
from tolerances import assert_same_function, float64, logits64

VOCAB = 128
SEQ = 32
IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=8, max_position_embeddings=128,
                  tie_word_embeddings=False, initializer_range=0.1, **IDS)
GEMMA = dict(LLAMA_LIKE, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=4,
             sliding_window=16, query_pre_attn_scalar=24,
             layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_LIKE))


def _mistral():
    return transformers.MistralForCausalLM(transformers.MistralConfig(**LLAMA_LIKE, sliding_window=16))


def _qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**LLAMA_LIKE))  # q/k/v biases


def _qwen3():
    cfg = dict(LLAMA_LIKE, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**cfg))  # q_norm/k_norm


def _phi3():
    cfg = {k: v for k, v in LLAMA_LIKE.items() if k != "head_dim"}  # head_dim = hidden / heads = 8
    return transformers.Phi3ForCausalLM(transformers.Phi3Config(**cfg))


def _gemma2():
    cfg = transformers.Gemma2Config(**GEMMA, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                    attn_implementation="eager")
    return transformers.Gemma2ForCausalLM(cfg)


def _gemma3():
    return transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**GEMMA))


def _opt():
    cfg = transformers.OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=3,
                                 num_attention_heads=8, max_position_embeddings=128, word_embed_proj_dim=64,
                                 init_std=0.1, **IDS)
    return transformers.OPTForCausalLM(cfg)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models are tiny: one intra-op thread is the fastest, and two threads spin-wait badly when the
    machine's cores are busy (a 64x64 linear went from ~0.1 ms to 20 ms under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


BUILDERS = {"llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "qwen3": _qwen3, "phi3": _phi3,
            "gemma2": _gemma2, "gemma3_text": _gemma3, "opt": _opt}
FAMILIES = list(BUILDERS)


@lru_cache(maxsize=None)
def _dense_cached(family: str) -> nn.Module:
    torch.manual_seed(0)
    model = BUILDERS[family]().float().eval()
    with torch.no_grad():  # non-trivial norms (Gemma's are stored as weight - 1, zero at init)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def dense(family: str) -> nn.Module:
    """A private deep copy of the family's tiny random model."""
    return copy.deepcopy(_dense_cached(family))


def calibration() -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, SEQ), generator=torch.Generator().manual_seed(0))


def eval_ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))


def slim_config(method: str = "slimgpt", **kw) -> PruningConfig:
    base = dict(pruning_ratio=0.3, dataset=None, num_samples=8, seqlen=SEQ, batch_size=4)
    base.update(kw)
    return PruningConfig.for_method(method, **base)


def logits(model, ids) -> torch.Tensor:
    return logits64(model, ids)  # same-function checks run in float64 (tests/tolerances.py)


# ------------------------------------------------------------------------------------------ module shapes
def _linear_params(block: nn.Module) -> int:
    return sum(p.numel() for m in block.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False))


def module_sizes(family: str, block: nn.Module) -> tuple[int, int, int]:
    """(query heads, KV heads, FFN channels) read from the module shapes alone (no adapter), checking that
    every linear of the block agrees."""
    attn = block.self_attn
    hd = attn.head_dim
    hidden = block.input_layernorm.weight.numel() if hasattr(block, "input_layernorm") else attn.embed_dim
    if family == "phi3":
        heads = attn.o_proj.in_features // hd
        kv = (attn.qkv_proj.out_features - heads * hd) // (2 * hd)
        assert attn.qkv_proj.out_features == (heads + 2 * kv) * hd
        ch = block.mlp.down_proj.in_features
        assert block.mlp.gate_up_proj.out_features == 2 * ch
        assert block.mlp.gate_up_proj.in_features == hidden
    elif family == "opt":
        heads = attn.q_proj.out_features // hd
        kv = attn.k_proj.out_features // hd
        assert attn.v_proj.out_features == kv * hd and attn.out_proj.in_features == heads * hd
        assert attn.q_proj.bias.numel() == heads * hd and attn.k_proj.bias.numel() == kv * hd
        ch = block.fc2.in_features
        assert block.fc1.out_features == ch and block.fc1.bias.numel() == ch
        assert attn.num_heads == heads
    else:
        heads = attn.q_proj.out_features // hd
        kv = attn.k_proj.out_features // hd
        assert attn.v_proj.out_features == kv * hd and attn.o_proj.in_features == heads * hd
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            assert lin.bias is None or lin.bias.numel() == lin.out_features
        ch = block.mlp.down_proj.in_features
        assert block.mlp.gate_proj.out_features == ch == block.mlp.up_proj.out_features
    if family != "opt":
        assert attn.num_key_value_groups == heads // kv
    return heads, kv, ch


def planned_sizes(pruner: SlimGPTPruner, i: int) -> tuple[int, int, int]:
    """Layer ``i``'s (heads, KV heads, channels) in the plan. Where the plan allows several head structures
    of the same size (``head_options``: ``(kv_kept, q_per_kv)``), the solver picks one: use that one."""
    lp = pruner.plan.layers[i]
    heads, kv = lp.heads, lp.kv_heads
    kept = pruner.kept[i]
    if (len(kept["heads"]), len(kept["kv_heads"])) != (heads, kv):
        option = (len(kept["kv_heads"]), len(kept["heads"]) // len(kept["kv_heads"]))
        assert option in [tuple(o) for o in lp.head_options], (option, lp.head_options)
        heads, kv = len(kept["heads"]), len(kept["kv_heads"])
    return heads, kv, lp.channels


# ------------------------------------------------------------------------------------------ tests
def test_registry_lists_every_family():
    assert set(FAMILIES) | {"gemma3"} <= set(supported_model_types())
    for family in FAMILIES:
        assert get_adapter(dense(family)).name == family
        assert get_adapter(family) is get_adapter(_dense_cached(family).config)


@pytest.mark.parametrize("family", FAMILIES)
def test_geometry_counts_the_actual_parameters(family):
    model = dense(family)
    adapter = get_adapter(model)
    for block in adapter.get_blocks(model):
        geom = adapter.geometry(block, model.config)
        assert geom.total_params == _linear_params(block)
        assert (geom.num_heads, geom.num_kv_heads, geom.channels) == module_sizes(family, block)
        # removing one head / KV group / channel by hand removes exactly the advertised parameters
        lay = adapter.head_layout(block, model.config)
        b = copy.deepcopy(block)
        n_rep = lay.n_rep
        adapter.prune_heads(b, model.config, list(range(lay.num_heads - n_rep)), list(range(lay.num_kv_heads - 1)))
        adapter.prune_channels(b, list(range(1, geom.channels)))
        assert _linear_params(b) == geom.params(lay.num_heads - n_rep, lay.num_kv_heads - 1, geom.channels - 1)
        assert module_sizes(family, b) == (lay.num_heads - n_rep, lay.num_kv_heads - 1, geom.channels - 1)


@lru_cache(maxsize=None)
def _pruned_cached(family: str):
    model = dense(family)
    pruner = SlimGPTPruner(slim_config())
    out = pruner.prune_model(model, calibration=calibration())
    assert out is model
    return model, pruner


def pruned(family: str):
    """(private deep copy of the family's model pruned at 30 %, its pruner)."""
    model, pruner = _pruned_cached(family)
    return copy.deepcopy(model), pruner


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_runs_and_follows_the_plan(family):
    ids = eval_ids()
    ref = logits(_dense_cached(family), ids)
    model, pruner = pruned(family)
    adapter = get_adapter(model)
    blocks = adapter.get_blocks(model)
    assert len(pruner.plan.layers) == len(blocks)
    for i, block in enumerate(blocks):
        assert module_sizes(family, block) == planned_sizes(pruner, i), f"layer {i}"
    assert sum(_linear_params(b) for b in blocks) == pruner.plan.params_after == pruner.summary.block_params_after
    assert abs(pruner.summary.achieved_ratio - 0.3) < 0.1
    assert any(lp.channels < 128 for lp in pruner.plan.layers)
    assert any(lp.heads < blocks_heads for lp, blocks_heads in
               zip(pruner.plan.layers, [module_sizes(family, b)[0] for b in adapter.get_blocks(_dense_cached(family))]))

    got = logits(model, ids)
    assert got.shape == ref.shape and torch.isfinite(got).all()
    assert not torch.allclose(got, ref, atol=1e-4)
    # greedy generation with a KV cache: each step's logits equal a full (uncached) forward's
    with float64(model):
        gen = model.generate(ids[:, :8], max_new_tokens=4, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
    assert gen.sequences.shape == (2, 12)
    full = logits(model, gen.sequences)
    for t, step in enumerate(gen.logits):
        assert_same_function(step, full[:, 7 + t])


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_model_equals_sliced_model(family):
    base = dense(family)
    ids = eval_ids()
    ref = logits(base, ids)
    masked = copy.deepcopy(base)
    pruner = SlimGPTPruner(slim_config(), mask_only=True)
    pruner.prune_model(masked, calibration=calibration())
    adapter = get_adapter(masked)
    # nothing was sliced
    for block in adapter.get_blocks(masked):
        assert module_sizes(family, block) == module_sizes(family, adapter.get_blocks(base)[0])
    sliced = copy.deepcopy(masked)
    assert len(pruner.kept) == len(adapter.get_blocks(sliced))
    for i, (block, kept) in enumerate(zip(adapter.get_blocks(sliced), pruner.kept)):
        adapter.prune_heads(block, sliced.config, kept["heads"], kept["kv_heads"])
        adapter.prune_channels(block, kept["channels"])
        assert module_sizes(family, block) == planned_sizes(pruner, i)
    assert sum(_linear_params(b) for b in adapter.get_blocks(sliced)) == pruner.plan.params_after
    a, b = logits(masked, ids), logits(sliced, ids)
    assert (a - ref).abs().max() > 1e-3, "pruning did not change the logits: the comparison would be trivial"
    assert_same_function(b, a)


@pytest.mark.parametrize("family", FAMILIES)
def test_slimllm_masked_model_equals_sliced_model(family):
    masked = dense(family)
    pruner = SlimGPTPruner(slim_config(method="slimllm"), mask_only=True)
    pruner.prune_model(masked, calibration=calibration())
    sliced = copy.deepcopy(masked)
    adapter = get_adapter(sliced)
    for i, (block, kept) in enumerate(zip(adapter.get_blocks(sliced), pruner.kept)):
        adapter.prune_heads(block, sliced.config, kept["heads"], kept["kv_heads"])
        adapter.prune_channels(block, kept["channels"])
        assert module_sizes(family, block) == planned_sizes(pruner, i)
    # SlimLLM may add an output bias (fixed parameters); the pruned structure has the planned size
    bias = sum(lin.bias.numel() for b in adapter.get_blocks(sliced)
               for lin in (adapter.attn_out_proj(b), adapter.mlp_out_proj(b)) if lin.bias is not None)
    bias0 = sum(lin.bias.numel() for b in adapter.get_blocks(_dense_cached(family))
                for lin in (adapter.attn_out_proj(b), adapter.mlp_out_proj(b)) if lin.bias is not None)
    assert sum(_linear_params(b) for b in adapter.get_blocks(sliced)) - bias == pruner.plan.params_after - bias0
    ids = eval_ids()
    assert_same_function(logits(sliced, ids), logits(masked, ids))


# ------------------------------------------------------------------------------------------ save / load
def _greedy(model, ids) -> torch.Tensor:
    return model.generate(ids[:, :8], max_new_tokens=6, do_sample=False, pad_token_id=0)


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_per_layer_checkpoint_round_trip(family, tmp_path):
    """prune 30 % (log_increase: layers differ) -> save -> AutoModelForCausalLM -> same logits and tokens."""

    model, _ = pruned(family)
    ids = eval_ids()
    ref, ref_tokens = logits(model, ids), _greedy(model, ids)
    res = save_pruned_model(model, tmp_path / "ckpt")
    assert res.format == "per_layer" and "different sizes" in res.reason
    loaded = _load(res.path)
    assert type(loaded) is type(model) and loaded.config.model_type == f"slimgpt_{family}"
    adapter = get_adapter(model)
    sizes = [module_sizes(family, b) for b in adapter.get_blocks(model)]
    assert len(set(sizes)) > 1
    assert [module_sizes(family, b) for b in get_adapter(loaded).get_blocks(loaded)] == sizes
    assert_same_function(logits(loaded, ids), ref)
    assert torch.equal(_greedy(loaded, ids), ref_tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_checkpoint_round_trip(family, tmp_path):
    """A uniform schedule saves as the plain family architecture where the family can express it; OPT (whose
    attention derives head_dim from hidden_size / heads) falls back to the per-layer format with the reason."""

    model = dense(family)
    SlimGPTPruner(slim_config(schedule="uniform")).prune_model(model, calibration=calibration())
    ids = eval_ids()
    ref = logits(model, ids)
    res = save_pruned_model(model, tmp_path / "ckpt")
    loaded = _load(res.path)
    if family == "opt":
        assert res.format == "per_layer" and "derives head_dim from hidden_size / heads" in res.reason
        assert loaded.config.model_type == "slimgpt_opt"
    else:
        assert res.format == "uniform"
        base_cls = type(_dense_cached(family))
        assert type(loaded) is base_cls and loaded.config.model_type == _dense_cached(family).config.model_type
    assert_same_function(logits(loaded, ids), ref)
    assert torch.equal(_greedy(loaded, ids), _greedy(model, ids))


@pytest.mark.parametrize("family", FAMILIES)
def test_slimllm_recovery_biases_survive_save_and_load(family, tmp_path):
    """SlimLLM's regression recovery adds output-projection biases (an architecture change for every family
    but OPT): the per-layer checkpoint carries them (``pruned_out_bias``) and reloads to the same logits; the
    plain/uniform format is refused with the reason."""
    from optimum_slimgpt.saving import BIAS_FLAGS, ExportError, save_pruned_model

    model = dense(family)
    SlimGPTPruner(slim_config(method="slimllm", schedule="uniform")).prune_model(model, calibration=calibration())
    adapter = get_adapter(model)
    out_biases = [adapter.attn_out_proj(b).bias for b in adapter.get_blocks(model)]
    assert all(b is not None for b in out_biases)
    ids = eval_ids()
    res = save_pruned_model(model, tmp_path / "ckpt")
    loaded = _load(res.path)
    if _bias_flags(family):  # Llama: attention_bias/mlp_bias hold them in the plain architecture (zero q/k/v/gate/up)
        assert res.format == "uniform" and loaded.config.model_type == _dense_cached(family).config.model_type
        assert all(getattr(loaded.config, f) for f in BIAS_FLAGS)
    else:
        assert res.format == "per_layer"
        assert loaded.config.model_type == f"slimgpt_{family}"
        assert loaded.config.pruned_out_bias is (family != "opt")  # OPT has the biases natively
    assert_same_function(logits(loaded, ids), logits(model, ids))
    if family != "opt" and not _bias_flags(family):
        with pytest.raises(ExportError, match="bias"):
            save_pruned_model(model, tmp_path / "plain", export_format="uniform")


def _bias_flags(family: str) -> bool:
    """Whether the family's plain config has the flags that give every attention / MLP linear a bias."""
    cfg = _dense_cached(family).config.get_text_config()
    from optimum_slimgpt.saving import BIAS_FLAGS

    return all(hasattr(cfg, f) for f in BIAS_FLAGS)


def test_opt_with_all_heads_kept_saves_as_plain_opt(tmp_path):

    model = dense("opt")
    SlimGPTPruner(slim_config(schedule="uniform", prune_heads=False)).prune_model(model, calibration=calibration())
    res = save_pruned_model(model, tmp_path / "ckpt")
    assert res.format == "uniform"
    loaded = _load(res.path)
    assert type(loaded) is transformers.OPTForCausalLM and loaded.config.ffn_dim < 128
    assert_same_function(logits(loaded, eval_ids()), logits(model, eval_ids()))


def test_opt_keeps_multi_head_attention_and_its_biases():
    model, pruner = pruned("opt")
    adapter = get_adapter(model)
    for block, kept in zip(adapter.get_blocks(model), pruner.kept):
        assert kept["heads"] == kept["kv_heads"]
        assert block.self_attn.out_proj.bias.numel() == 64 and block.fc2.bias.numel() == 64
        geom = adapter.geometry(block, model.config)
        assert geom.fixed_params == 128  # out_proj.bias + fc2.bias
    with pytest.raises(ValueError, match="multi-head"):
        adapter.prune_heads(adapter.get_blocks(model)[0], model.config, [0, 1], [1, 0])


def test_phi3_attention_gets_a_per_layer_config_view():
    model, _ = pruned("phi3")
    adapter = get_adapter(model)
    attn = adapter.get_blocks(model)[-1].self_attn
    view = attn.config
    assert isinstance(view, LayerConfigView) and view.base_config is model.config
    assert view.num_attention_heads == adapter.head_layout(adapter.get_blocks(model)[-1], model.config).num_heads
    # the shared config keeps the original global size (read without the per-layer ambiguity guard)
    assert model.config.global_value("num_attention_heads") == 8
    assert view.sliding_window == model.config.sliding_window
    # the attention implementation is read live from the shared config: a registered one reaches every layer
    calls = []

    def counting(module, *args, **kwargs):
        calls.append(module.layer_idx)
        return transformers.integrations.sdpa_attention.sdpa_attention_forward(module, *args, **kwargs)

    transformers.AttentionInterface.register("slimgpt_test_counting", counting)
    model.set_attn_implementation("slimgpt_test_counting")
    logits(model, eval_ids())
    assert sorted(set(calls)) == list(range(len(adapter.get_blocks(model))))
    model.set_attn_implementation("sdpa")
    clone = copy.deepcopy(model)
    assert adapter.get_blocks(clone)[-1].self_attn.config.base_config is clone.config
    ids = eval_ids()
    assert_same_function(logits(clone, ids), logits(model, ids))
    # fused rows: the gate and up halves are reported one row per channel
    block = adapter.get_blocks(model)[-1]
    gate, up = adapter.channel_in_weights(block)
    assert gate.shape == up.shape == (adapter.num_channels(block), 64)


@pytest.mark.parametrize("family", ["phi3", "gemma2", "opt"])
def test_padded_checkpoint_round_trip(family, tmp_path):
    """Fused projections, sandwich norms, full-size attention: the zero-padded plain checkpoint is exact."""
    model, _ = pruned(family)
    ids = eval_ids()
    ref = logits(model, ids)
    res = save_pruned_model(model, tmp_path / "padded", export_format="padded")
    loaded = _load(res.path)
    assert type(loaded) is type(_dense_cached(family)) and res.format == "padded"
    assert len({module_sizes(family, b) for b in get_adapter(loaded).get_blocks(loaded)}) == 1
    assert_same_function(logits(loaded, ids), ref)


def test_phi3_padded_block_state_dict_computes_the_same_function():
    model, _ = pruned("phi3")
    adapter = get_adapter(model)
    blocks = adapter.get_blocks(model)
    kv = max(adapter.head_layout(b, model.config).num_kv_heads for b in blocks)
    rep = max(adapter.head_layout(b, model.config).n_rep for b in blocks)
    channels = max(adapter.num_channels(b) for b in blocks)
    cfg = copy.deepcopy(_dense_cached("phi3").config)
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size = kv * rep, kv, channels
    cfg.head_dim = 8
    plain = transformers.Phi3ForCausalLM(cfg).eval()
    sd = dict(model.state_dict())
    for i, b in enumerate(blocks):
        for k, v in adapter.padded_block_state_dict(b, model.config, kv, rep, channels).items():
            sd[f"{adapter.layout.blocks}.{i}.{k}"] = v
    plain.load_state_dict(sd, strict=True)
    ids = eval_ids()
    assert_same_function(logits(plain, ids), logits(model, ids))


def _gemma3_multimodal():
    text = transformers.Gemma3TextConfig(**GEMMA)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14)
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                    image_token_index=VOCAB - 1, boi_token_index=VOCAB - 2, eoi_token_index=VOCAB - 3)
    torch.manual_seed(0)
    return transformers.Gemma3ForConditionalGeneration(cfg).eval()


GEMMA3_IDS = torch.randint(3, VOCAB - 3, (2, 16), generator=torch.Generator().manual_seed(1))
GEMMA3_CALIB = torch.randint(3, VOCAB - 3, (8, SEQ), generator=torch.Generator().manual_seed(0))


def test_gemma3_multimodal_text_decoder_is_pruned():
    model = _gemma3_multimodal()
    vision_before = {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}
    ref = logits(model, GEMMA3_IDS)
    pruner = SlimGPTPruner(slim_config())
    pruner.prune_model(model, calibration=GEMMA3_CALIB)
    adapter = get_adapter(model)
    assert adapter.name == "gemma3"
    for i, block in enumerate(adapter.get_blocks(model)):
        assert module_sizes("gemma3_text", block) == planned_sizes(pruner, i)
    got = logits(model, GEMMA3_IDS)
    assert torch.isfinite(got).all() and not torch.allclose(got, ref, atol=1e-4)
    for k, v in model.model.vision_tower.state_dict().items():
        assert torch.equal(v, vision_before[k])


@pytest.mark.parametrize("schedule, export_format", [("uniform", "uniform"), ("log_increase", "padded")])
def test_gemma3_multimodal_saves_and_reloads(schedule, export_format, tmp_path):
    """The sizes go to the text_config; the reloaded plain Gemma3ForConditionalGeneration gives the same logits."""
    model = _gemma3_multimodal()
    SlimGPTPruner(slim_config(schedule=schedule)).prune_model(model, calibration=GEMMA3_CALIB)
    sizes = [module_sizes("gemma3_text", b) for b in get_adapter(model).get_blocks(model)]
    assert (len(set(sizes)) == 1) == (schedule == "uniform"), sizes
    ref = logits(model, GEMMA3_IDS)
    with pytest.raises(ExportError, match="per_layer"):  # no per-layer class for the multimodal wrapper
        save_pruned_model(model, tmp_path / "pl", export_format="per_layer")
    res = save_pruned_model(model, tmp_path / "out")  # auto: the plain architecture, uniform or zero-padded
    assert res.format == export_format
    cfg = json.loads((res.path / "config.json").read_text())
    assert cfg["model_type"] == "gemma3" and "per_layer_config" not in cfg
    widest = max(s[2] for s in sizes)
    assert cfg["text_config"]["intermediate_size"] == widest and cfg.get("intermediate_size") is None
    loaded = transformers.Gemma3ForConditionalGeneration.from_pretrained(res.path).eval()
    assert loaded.config.text_config.intermediate_size == widest
    assert_same_function(logits(loaded, GEMMA3_IDS), ref)
    assert res.num_parameters == sum(p.numel() for p in loaded.parameters())


@pytest.mark.parametrize("make", [
    lambda: transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                                  num_attention_heads=4, intermediate_size=64)),
    lambda: transformers.BertModel(transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                            num_attention_heads=4, intermediate_size=64)),
])
def test_unsupported_family_fails_with_a_type_error_naming_the_supported_ones(make):
    model = make()
    with pytest.raises(TypeError) as err:
        get_adapter(model)
    msg = str(err.value)
    assert "'bert'" in msg
    for family in FAMILIES:
        assert family in msg
    assert "register_family" in msg
    with pytest.raises(TypeError, match="Supported model types: .*llama.*phi3"):
        SlimGPTPruner(slim_config()).prune_model(model, calibration=calibration())


def test_user_registered_adapter():
    class MyLlama(FamilyAdapter):
        name = "my_llama"
        model_types = ("my_llama_type",)

    try:
        register_family(MyLlama)
        assert "my_llama_type" in supported_model_types()
        assert get_adapter("my_llama_type").name == "my_llama"
        with pytest.raises(ValueError, match="already served"):
            register_family(MyLlama)
        model = dense("llama")
        model.config.model_type = "my_llama_type"
        assert isinstance(get_adapter(model), MyLlama)
    finally:
        unregister_family("my_llama_type")
    assert "my_llama_type" not in supported_model_types()
    with pytest.raises(ValueError, match="no model_types"):
        register_family(type("Empty", (FamilyAdapter,), {}))


# ------------------------------------------------------------------------------------------ attention reuse
def _prune_state(family: str, reuse: bool, **kw) -> tuple[dict, SlimGPTPruner]:
    model = dense(family)
    pruner = SlimGPTPruner(slim_config(**kw))
    pruner.reuse_attention_output = reuse
    pruner.prune_model(model, calibration=calibration())
    return model.state_dict(), pruner


@pytest.mark.parametrize("family", FAMILIES)
def test_block_outputs_from_the_mlp_tail_are_bit_identical(family):
    """The block outputs built from the kept residual stream (no third attention run) give exactly the
    weights of whole-block forwards, for every layer; OPT has no tail and always runs whole blocks."""
    ref, p_ref = _prune_state(family, reuse=False)
    got, p_got = _prune_state(family, reuse=True)
    assert p_ref.summary.mlp_tail is None
    assert p_got.summary.mlp_tail is (None if family == "opt" else True)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_a_wrong_mlp_tail_is_detected_and_whole_blocks_run(monkeypatch):
    ref, _ = _prune_state("llama", reuse=False)
    adapter_cls = type(get_adapter(dense("llama")))
    monkeypatch.setattr(adapter_cls, "mlp_tail", lambda self, block, h: h)  # drops the MLP
    got, pruner = _prune_state("llama", reuse=True)
    assert pruner.summary.mlp_tail is False
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_blocks_with_accelerate_hooks_run_whole():
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    ref, _ = _prune_state("llama", reuse=False)
    model = dense("llama")
    for block in get_adapter(model).get_blocks(model):
        add_hook_to_module(block, AlignDevicesHook(execution_device="cpu"))
    pruner = SlimGPTPruner(slim_config())
    pruner.prune_model(model, calibration=calibration())
    assert pruner.summary.mlp_tail is None  # never tried: the hooks act on the block's own forward
    got = model.state_dict()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


@pytest.mark.parametrize("family", FAMILIES)
def test_the_export_dry_run_agrees_with_the_real_save(family):
    """``prune_model(export_format=...)`` decides before pruning, on a meta-device skeleton cut to the plan, what
    the save will do: the same format (or the same refusal) as ``plan_export`` on the really pruned model."""
    from optimum_slimgpt.saving import ExportError, plan_export

    def outcome(fn):
        try:
            return fn().format
        except ExportError as e:
            return f"refused: {e.reason}"

    for method, schedule in (("slimgpt", "log_increase"), ("slimgpt", "uniform"), ("slimllm", "uniform")):
        pruner = SlimGPTPruner(slim_config(method, schedule=schedule))
        model = dense(family)
        def dry_run(fmt):
            pruner.preflight(model, calibration=calibration(), export_format=fmt)
            return pruner.export_plan

        dry = {fmt: outcome(lambda: dry_run(fmt)) for fmt in ("auto", "uniform", "per_layer", "padded")}
        pruner.prune_model(model, calibration=calibration())
        real = {fmt: outcome(lambda: plan_export(model, fmt)) for fmt in dry}
        assert dry == real, (method, schedule)
        if method == "slimllm":
            assert dry["uniform"].startswith("refused") is not _bias_flags(family), dry
