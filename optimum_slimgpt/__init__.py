"""optimum-slimgpt: structured pruning of Hugging Face causal LMs (SlimGPT, SlimLLM)."""

__version__ = "0.1.0"

from .config import SlimGPTConfig  # noqa: E402
from .families import FamilyAdapter, get_adapter, register_family, supported_model_types  # noqa: E402
from .pruner import LayerReport, PruningSummary, SlimGPTPruner  # noqa: E402
# registers the per-layer pruned classes (slimgpt_<family>) with AutoConfig/AutoModel/AutoModelForCausalLM
from .modeling import register_pruned_family, to_pruned_model  # noqa: E402
from .saving import SaveResult, save_pruned_model  # noqa: E402
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
    "register_pruned_family",
    "to_pruned_model",
    "save_pruned_model",
    "SaveResult",
]
