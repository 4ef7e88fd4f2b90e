"""Gemma 2 and Gemma 3: the Llama layout (``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``).

Only the norms around the MLP differ (``pre/post_feedforward_layernorm``, for
:meth:`~optimum_slimgpt.families.base.FamilyAdapter.mlp_tail`). What the attention forward reads was
checked against transformers 5.x:

* ``scaling = query_pre_attn_scalar ** -0.5`` is computed from the config at construction and stored on
  the module; ``head_dim`` never changes, so it stays as it is after pruning.
* attention logit softcapping (Gemma 2; ``attn_logit_softcapping``) is applied per score, independent of
  the number of heads (only the eager attention honours it: use ``attn_implementation="eager"``).
* ``sliding_window`` is a per-module attribute set from ``config.layer_types``; the masks and the
  per-layer-type rotary embeddings (Gemma 3) are computed by the model and passed to each block, and the
  pruner records every block's own keyword arguments.
* Gemma 3's ``q_norm``/``k_norm`` act on one ``head_dim`` vector and are shared by all heads: kept as is.
* the sandwich norms (``pre/post_feedforward_layernorm``, ``post_attention_layernorm``) act on the hidden
  size, which is not pruned.
* heads are read from ``self.head_dim``/tensor shapes; ``num_key_value_groups`` is updated after surgery.

``gemma3`` (``Gemma3ForConditionalGeneration``, image + text) is served too: only its language model's
decoder blocks (``model.language_model.layers``) are pruned; the vision tower and the projector are left
untouched, and calibration is text only.
"""

from __future__ import annotations

import dataclasses

from .base import BlockLayout, FamilyAdapter
from .registry import register_family

__all__ = ["Gemma2Adapter", "Gemma3TextAdapter", "Gemma3Adapter"]


_GEMMA = BlockLayout(mlp_norm="pre_feedforward_layernorm", mlp_post_norm="post_feedforward_layernorm")


class _GemmaLayout(FamilyAdapter):
    """The sandwich norms around Gemma's MLP (not registered: the families below are)."""

    layout = _GEMMA


@register_family
class Gemma2Adapter(_GemmaLayout):
    name = "gemma2"
    model_types = ("gemma2",)


@register_family
class Gemma3TextAdapter(_GemmaLayout):
    """``Gemma3ForCausalLM`` (``Gemma3TextConfig``, ``model_type="gemma3_text"``)."""

    name = "gemma3_text"
    model_types = ("gemma3_text",)


@register_family
class Gemma3Adapter(_GemmaLayout):
    """``Gemma3ForConditionalGeneration``: the text decoder's blocks only."""

    name = "gemma3"
    model_types = ("gemma3",)
    layout = dataclasses.replace(_GEMMA, blocks="model.language_model.layers", text_config="text_config")
