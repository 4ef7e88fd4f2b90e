# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""vLLM model classes for per-layer pruned Llama, Mistral, Qwen2 and Qwen3 checkpoints.

Imported by vLLM only (the plugin registers ``module:class`` strings), so it may import vLLM at module level.

``SlimGPT<Family>ForCausalLM`` is vLLM's own ``LlamaForCausalLM`` (embeddings, ``LlamaModel``'s layer loop,
final norm, LM head, weight loading with the fused ``qkv_proj`` / ``gate_up_proj`` of ``LlamaModel``'s
``hf_to_vllm_mapper``) whose decoder layers are :class:`SlimGPTDecoderLayer`: vLLM's ``RMSNorm``\\ s around

* the family's vLLM attention (``LlamaAttention``, ``MistralAttention``, ``Qwen3Attention`` with its q/k norms;
  Qwen2 is ``LlamaAttention`` with q/k/v biases and the explicit ``head_dim``, which vLLM's ``Qwen2Attention``
  would derive from ``hidden_size / heads``), built with *this layer's* query heads and KV heads, so each layer
  has its own ``Attention`` with its own KV-cache shape;
* vLLM's ``LlamaMLP`` with this layer's FFN channels;

with a bias on ``o_proj`` / ``down_proj`` where the checkpoint has one (``pruned_out_bias``: SlimLLM, affine
OBS). A layer left with 0 heads (or 0 channels) gets :class:`RemovedPart` instead: it adds the output bias if
there is one, else nothing, and has no KV cache.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any, Optional

import torch
from torch import nn

from vllm.config import VllmConfig
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import RowParallelLinear
from vllm.model_executor.models.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP, LlamaModel
from vllm.model_executor.models.mistral import MistralAttention
from vllm.model_executor.models.qwen3 import Qwen3Attention
from vllm.model_executor.models.utils import extract_layer_index

from .checks import FAMILIES, FamilyRules, VLLMCheckpointError, check_config

__all__ = ["RemovedPart", "SlimGPTDecoderLayer", "SlimGPTForCausalLM"] + [
    r.plugin_architecture for r in FAMILIES.values()]


class LayerConfig:
    """One layer's view of the model config: its own sizes, and family flags the vLLM layers read."""

    def __init__(self, base: Any, **overrides: Any) -> None:
        self.__dict__["_base"] = base
        self.__dict__["_overrides"] = overrides

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        over = self.__dict__["_overrides"]
        return over[name] if name in over else getattr(self.__dict__["_base"], name)


class _Bias(nn.Module):
    """Holds the output bias of a removed part, under the checkpoint's name (``o_proj.bias``)."""

    def __init__(self, size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.empty(size, dtype=dtype), requires_grad=False)


class RemovedPart(nn.Module):
    """An attention or FFN with nothing left: its output is the output projection's bias, or zero."""

    def __init__(self, hidden_size: int, out_proj: str, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.out_proj = out_proj
        if bias:
            self.add_module(out_proj, _Bias(hidden_size, dtype))

    def forward(self, x: Optional[torch.Tensor] = None, *, positions=None, hidden_states=None) -> torch.Tensor:
        x = hidden_states if x is None else x
        holder = getattr(self, self.out_proj, None)
        if holder is None:
            return torch.zeros_like(x)
        return holder.bias.to(x.dtype).expand_as(x).clone()


def _biased_row_linear(old: RowParallelLinear, quant_config, prefix: str) -> RowParallelLinear:
    """``old`` rebuilt with a bias (the output projections of SlimLLM / affine-OBS checkpoints)."""
    return RowParallelLinear(old.input_size, old.output_size, bias=True, quant_config=quant_config, prefix=prefix)


class SlimGPTDecoderLayer(nn.Module):
    """A Llama-style decoder layer with its own query heads, KV heads and FFN channels (see the module docs)."""

    def __init__(self, vllm_config: VllmConfig, prefix: str = "", *, rules: FamilyRules) -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        cache_config = vllm_config.cache_config
        quant_config = vllm_config.quant_config
        info = check_config(config)
        idx = extract_layer_index(prefix)
        sizes = info.layers[idx]
        heads, kv, channels = sizes["num_attention_heads"], sizes["num_key_value_heads"], sizes["intermediate_size"]
        hidden, head_dim = info.hidden_size, info.head_dim
        dtype = torch.get_default_dtype()
        self.hidden_size = hidden
        o_bias, down_bias = rules.o_bias(config) or info.out_bias, rules.mlp_bias(config) or info.out_bias
        lc = LayerConfig(config, num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=channels,
                         head_dim=head_dim)
        eps = config.rms_norm_eps
        max_pos = getattr(config, "max_position_embeddings", 8192)

        if heads == 0:
            self.self_attn = RemovedPart(hidden, "o_proj", o_bias, dtype)
        elif rules.qk_norm:
            self.self_attn = Qwen3Attention(
                hidden_size=hidden, num_heads=heads, num_kv_heads=kv, rope_parameters=config.rope_parameters,
                max_position=max_pos, head_dim=head_dim, rms_norm_eps=eps, qkv_bias=rules.qkv_bias(config),
                cache_config=cache_config, quant_config=quant_config, prefix=f"{prefix}.self_attn")
        else:
            attention_cls = MistralAttention if rules.base_model_type == "mistral" else LlamaAttention
            self.self_attn = attention_cls(
                config=lc, hidden_size=hidden, num_heads=heads, num_kv_heads=kv, max_position_embeddings=max_pos,
                quant_config=quant_config, bias=rules.qkv_bias(config), bias_o_proj=o_bias,
                cache_config=cache_config, prefix=f"{prefix}.self_attn")
        if heads and o_bias and self.self_attn.o_proj.bias is None:  # Qwen3Attention's o_proj has none
            self.self_attn.o_proj = _biased_row_linear(self.self_attn.o_proj, quant_config, f"{prefix}.self_attn.o_proj")

        if channels == 0:
            self.mlp = RemovedPart(hidden, "down_proj", down_bias, dtype)
        else:
            self.mlp = LlamaMLP(hidden_size=hidden, intermediate_size=channels, hidden_act=config.hidden_act,
                                quant_config=quant_config, bias=rules.mlp_bias(config), prefix=f"{prefix}.mlp")
            if down_bias and self.mlp.down_proj.bias is None:
                self.mlp.down_proj = _biased_row_linear(self.mlp.down_proj, quant_config, f"{prefix}.mlp.down_proj")
        self.input_layernorm = RMSNorm(hidden, eps=eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps=eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions=positions, hidden_states=hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class SlimGPTForCausalLM(LlamaForCausalLM):
    """vLLM's ``LlamaForCausalLM`` with :class:`SlimGPTDecoderLayer`\\ s; one subclass per family sets ``rules``."""

    rules: FamilyRules = None

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", **kwargs) -> None:
        info = check_config(vllm_config.model_config.hf_config)
        if info.family is not self.rules:
            raise VLLMCheckpointError(f"{type(self).__name__} serves {self.rules.model_type} checkpoints, not "
                                      f"{info.family.model_type}")
        super().__init__(vllm_config=vllm_config, prefix=prefix,
                         layer_type=partial(SlimGPTDecoderLayer, rules=self.rules))

    def _init_model(self, vllm_config: VllmConfig, prefix: str = "", layer_type=None):
        return LlamaModel(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # the empty tensors of a removed attention / FFN have no parameter to go to
        return super().load_weights((name, w) for name, w in weights if w.numel() > 0)


def _family_class(rules: FamilyRules) -> type:
    return type(rules.plugin_architecture, (SlimGPTForCausalLM,),
                {"__module__": __name__, "__qualname__": rules.plugin_architecture, "rules": rules,
                 "__doc__": f"Per-layer pruned {rules.base_model_type} checkpoints ({rules.model_type}) in vLLM."})


for _rules in FAMILIES.values():
    globals()[_rules.plugin_architecture] = _family_class(_rules)
