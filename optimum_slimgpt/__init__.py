"""optimum-slimgpt: structured pruning of Hugging Face causal LMs (SlimGPT, SlimLLM)."""

__version__ = "0.1.0"

from .config import SlimGPTConfig  # noqa: E402
from .families import FamilyAdapter, get_adapter, register_family, supported_model_types  # noqa: E402
from .pruner import LayerReport, PruningSummary, SlimGPTPruner  # noqa: E402
from . import selfgen as _selfgen  # noqa: E402,F401  (registers dataset="self")

__all__ = [
    "__version__",
    "SlimGPTConfig",
    "SlimGPTPruner",
    "PruningSummary",
    "LayerReport",
    "FamilyAdapter",
    "get_adapter",
    "register_family",
    "supported_model_types",
]
