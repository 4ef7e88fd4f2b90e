"""Model-family adapters and their registry.

The pruner never branches on the architecture: it asks :func:`get_adapter` (keyed by
``config.model_type``) for a :class:`FamilyAdapter` that says where the decoder blocks are, which linears
hold the attention heads and the FFN channels, how to count their parameters and how to slice them.

Built-in families (``supported_model_types()``):

===================  ============================  ==================================================
model_type           adapter                       layout
===================  ============================  ==================================================
``llama``            :class:`LlamaAdapter`         ``q/k/v/o_proj``, ``gate/up/down_proj`` (default)
``mistral``          :class:`MistralAdapter`       as Llama (sliding window is a per-layer kwarg)
``qwen2``            :class:`Qwen2Adapter`         as Llama, q/k/v biases sliced with their rows
``qwen3``            :class:`Qwen3Adapter`         as Llama, ``q_norm``/``k_norm`` shared per head_dim
``phi3``             :class:`Phi3Adapter`          fused ``qkv_proj`` and ``gate_up_proj``
``gemma2``           :class:`Gemma2Adapter`        as Llama (softcapping, ``query_pre_attn_scalar``)
``gemma3_text``      :class:`Gemma3TextAdapter`    as Llama (+ ``q_norm``/``k_norm``)
``gemma3``           :class:`Gemma3Adapter`        text decoder of ``Gemma3ForConditionalGeneration``
``opt``              :class:`OPTAdapter`           ``model.decoder.layers``, ``out_proj``, ``fc1``/``fc2``
===================  ============================  ==================================================

Registering your own family
---------------------------
Subclass :class:`FamilyAdapter` (its defaults describe the Llama layout), set ``name``, ``model_types``
and whichever module names differ, and decorate it with :func:`register_family`::

    from optimum_slimgpt.families import FamilyAdapter, register_family

    @register_family
    class MyAdapter(FamilyAdapter):
        name = "my_model"
        model_types = ("my_model",)          # config.model_type values served
        blocks_path = "transformer.h"         # the decoder-block ModuleList
        o_name = "out_proj"

A fused layout (rows of one linear holding several groups) overrides ``head_layout``, ``geometry``,
``prune_heads``, ``prune_channels`` and ``channel_in_weights`` (see :mod:`.phi3`). If the attention
forward reads a head count from ``self.config``, ``set_attention_sizes`` must make it per-layer (e.g.
with :class:`LayerConfigView`). Pass ``override=True`` to replace a built-in adapter. See
``docs/families.md``.
"""

from .base import FamilyAdapter, HeadLayout, LayerConfigView, get_submodule, slice_linear
from .registry import get_adapter, register_family, supported_model_types
from . import llama  # noqa: F401  (registers the built-in families)
from . import phi3  # noqa: F401
from . import gemma  # noqa: F401
from . import opt  # noqa: F401
from .llama import LlamaAdapter, MistralAdapter, Qwen2Adapter, Qwen3Adapter
from .phi3 import Phi3Adapter
from .gemma import Gemma2Adapter, Gemma3Adapter, Gemma3TextAdapter
from .opt import OPTAdapter

__all__ = [
    "FamilyAdapter",
    "HeadLayout",
    "LayerConfigView",
    "get_adapter",
    "get_submodule",
    "register_family",
    "slice_linear",
    "supported_model_types",
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
