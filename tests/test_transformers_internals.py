"""The private transformers (and accelerate/torch) names that optimum_slimgpt relies on still exist and behave.

Each check names the internal and why the package needs it (the list in docs/architecture.md), so that a
transformers release that removes or changes one fails here with that name, not somewhere deep in a pruning run.
"""

from __future__ import annotations

import pytest
import torch
import transformers

DOC = "see 'transformers internals' in docs/architecture.md"


def _hetero_config():
    return transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                                     per_layer_config={0: {"intermediate_size": 24}})


def _can_record_registry():
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

    model = transformers.LlamaModel(transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                                             num_hidden_layers=1, num_attention_heads=4))
    assert _CAN_RECORD_REGISTRY.get(model), "no longer filled at a model's __init__"
    model.__class__ = type("SlimGPTProbeModel", (type(model),), {})  # what adopt_class does
    assert not _CAN_RECORD_REGISTRY.get(model), "the swapped class is found without re-registering: simplify adopt_class"
    _CAN_RECORD_REGISTRY[model] = model._can_record_outputs
    assert _CAN_RECORD_REGISTRY.get(model) == model._can_record_outputs


def _getattr_without_validation():
    cfg = _hetero_config()
    assert cfg._getattr_without_heterogeneous_validation("intermediate_size", None) == 32


def _heterogeneity_spec():
    spec = _hetero_config().__dict__.get("_heterogeneity_spec")
    assert spec is not None, "not stored in the config's __dict__"
    assert {int(k): dict(v) for k, v in spec.per_layer_overrides.items()} == {0: {"intermediate_size": 24}}


def _per_layer_config_property():
    assert isinstance(getattr(transformers.LlamaConfig, "per_layer_config", None), property)


def _serialize_explicit():
    cfg = _hetero_config()
    cfg.serialize_explicit_per_layer_config = True
    plc = cfg.to_dict()["per_layer_config"]
    assert len(plc) == 2 and all("intermediate_size" in v for v in plc.values()), plc


def _ambiguous_error():
    from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError

    with pytest.raises(AmbiguousGlobalPerLayerAttributeError):
        _hetero_config().intermediate_size  # noqa: B018


def _global_device():
    from transformers.modeling_utils import get_torch_context_manager_or_global_device

    with torch.device("meta"):
        assert get_torch_context_manager_or_global_device() == torch.device("meta")


def _attn_implementation_internal():
    cfg = transformers.LlamaConfig()
    cfg._attn_implementation_internal = "eager"
    assert cfg._attn_implementation == "eager"


def _auto_mappings():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

    assert "llama" in CONFIG_MAPPING and MODEL_MAPPING_NAMES["llama"] == "LlamaModel"
    assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES["llama"] == "LlamaForCausalLM"


def _remove_quantization_config():
    from transformers.quantizers.base import HfQuantizer

    assert callable(getattr(HfQuantizer, "remove_quantization_config", None))


def _accelerate_hf_hook():
    from accelerate.hooks import ModelHook, add_hook_to_module

    m = add_hook_to_module(torch.nn.Linear(2, 2), ModelHook())
    assert hasattr(m, "_hf_hook")


def _remove_tied_weights():
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True))
    kept = remove_tied_weights_from_state_dict(dict(model.state_dict()), model)
    assert "model.embed_tokens.weight" in kept and "lm_head.weight" not in kept


def _torch_module_stores():
    m = torch.nn.BatchNorm1d(2)
    assert "weight" in m._parameters and "running_mean" in m._buffers


CHECKS = {
    "transformers.utils.output_capturing._CAN_RECORD_REGISTRY (+ _can_record_outputs): adopt_class re-registers a "
    "model whose __class__ is swapped to the pruned class, or output_hidden_states breaks": _can_record_registry,
    "PretrainedConfig._getattr_without_heterogeneous_validation: reading the global (unpruned) size of a per-layer "
    "config (global_value, base_config_dict)": _getattr_without_validation,
    "PretrainedConfig._heterogeneity_spec: the per-layer overrides of a native per-layer config": _heterogeneity_spec,
    "PretrainedConfig.per_layer_config property (HeterogeneousConfigMixin): the per-layer schema of the pruned "
    "configs": _per_layer_config_property,
    "serialize_explicit_per_layer_config: write every layer and key into config.json": _serialize_explicit,
    "AmbiguousGlobalPerLayerAttributeError: the guard on per-layer sizes read globally": _ambiguous_error,
    "transformers.modeling_utils.get_torch_context_manager_or_global_device: skip weight init of pruned layers "
    "built on the meta device": _global_device,
    "PretrainedConfig._attn_implementation_internal: carry the attention implementation to the pruned config":
        _attn_implementation_internal,
    "transformers.models.auto CONFIG_MAPPING / MODEL_MAPPING_NAMES / MODEL_FOR_CAUSAL_LM_MAPPING_NAMES: build and "
    "register the pruned classes of a family": _auto_mappings,
    "HfQuantizer.remove_quantization_config: drop the GGUF quantizer of a dequantized model before saving":
        _remove_quantization_config,
    "accelerate's module._hf_hook: blocks under device_map/offload hooks always run whole": _accelerate_hf_hook,
    "torch.nn.Module._parameters / _buffers: move one block's tensors to the pruning device": _torch_module_stores,
    "transformers.modeling_utils.remove_tied_weights_from_state_dict: the tensor names save_pretrained writes "
    "(tied weights once), for the export dry run and the streamed output": _remove_tied_weights,
}


@pytest.mark.parametrize("name", list(CHECKS), ids=[n.split(":")[0].split(" ")[0] for n in CHECKS])
def test_internal_still_there(name):
    try:
        CHECKS[name]()
    except Exception as e:  # noqa: BLE001 - any failure means the internal moved or changed
        pytest.fail(f"transformers {transformers.__version__}: the internal {name.split(':')[0]} is gone or changed "
                    f"({type(e).__name__}: {e}). optimum_slimgpt uses it for: {name.split(':', 1)[1].strip()}; {DOC}",
                    pytrace=False)
