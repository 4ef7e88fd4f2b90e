"""Model-family adapters and their registry.

The pruner never branches on the architecture: it asks :func:`get_adapter` (keyed by ``config.model_type``)
for a :class:`FamilyAdapter`, whose :class:`BlockLayout` says where the decoder blocks are and which linears
hold the attention heads and the FFN channels. Parameter counting, slicing, masking, padding, the per-layer
model classes and saving all read that one record.

Built-in families (``supported_model_types()``):

===================  ============================  ==================================================
model_type           adapter                       layout
===================  ============================  ==================================================
``llama``            :class:`LlamaAdapter`         ``q/k/v/o_proj``, ``gate/up/down_proj`` (default)
``mistral``          :class:`MistralAdapter`       as Llama (sliding window is a per-layer kwarg)
``qwen2``            :class:`Qwen2Adapter`         as Llama, q/k/v biases sliced with their rows
``qwen3``            :class:`Qwen3Adapter`         as Llama, ``q_norm``/``k_norm`` shared per head_dim
``phi3``             :class:`Phi3Adapter`          fused ``qkv_proj`` and ``gate_up_proj``
``gemma2``           :class:`Gemma2Adapter`        as Llama, sandwich norms around the MLP
``gemma3_text``      :class:`Gemma3TextAdapter`    as Gemma 2 (+ ``q_norm``/``k_norm``)
``gemma3``           :class:`Gemma3Adapter`        text decoder of ``Gemma3ForConditionalGeneration``
``opt``              :class:`OPTAdapter`           ``model.decoder.layers``, ``out_proj``, ``fc1``/``fc2``
===================  ============================  ==================================================

Registering your own family: subclass :class:`FamilyAdapter`, declare ``name``, ``model_types`` and the
``layout`` (only what differs from Llama), and decorate it with :func:`register_family` (see
``docs/families.md``).
"""

from .base import BlockLayout, FamilyAdapter, HeadLayout, LayerConfigView, get_submodule, slice_linear
from .registry import get_adapter, register_family, supported_model_types, unregister_family
from . import llama  # noqa: F401  (registers the built-in families)
from . import phi3  # noqa: F401
from . import gemma  # noqa: F401
from . import opt  # noqa: F401
from .llama import LlamaAdapter, MistralAdapter, Qwen2Adapter, Qwen3Adapter
from .phi3 import Phi3Adapter
from .gemma import Gemma2Adapter, Gemma3Adapter, Gemma3TextAdapter
from .opt import OPTAdapter

__all__ = [
    "BlockLayout",
    "FamilyAdapter",
    "HeadLayout",
    "LayerConfigView",
    "get_adapter",
    "get_submodule",
    "register_family",
    "slice_linear",
    "supported_model_types",
    "unregister_family",
    "LlamaAdapter",
    "MistralAdapter",
    "Qwen2Adapter",
    "Qwen3Adapter",
    "Phi3Adapter",
    "Gemma2Adapter",
    "Gemma3TextAdapter",
    "Gemma3Adapter",
    "OPTAdapter",
]
