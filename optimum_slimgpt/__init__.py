"""optimum-slimgpt: structured pruning of Hugging Face causal LMs (SlimGPT, SlimLLM)."""

__version__ = "0.1.0"

from .config import ConfigError, FLAPConfig, PruningConfig, SlimGPTConfig, SlimLLMConfig  # noqa: E402
from .families import BlockLayout, FamilyAdapter, get_adapter, register_family, supported_model_types  # noqa: E402
from .methods import Observer, PruningMethod, get_method, register_method, unregister_method  # noqa: E402
from .pruner import LayerReport, PruningSummary, SlimGPTPruner  # noqa: E402
# registers the per-layer pruned classes (slimgpt_<family>) with AutoConfig/AutoModel/AutoModelForCausalLM
from .modeling import PruningRecord, UnusableModelError, register_pruned_family, to_pruned_model  # noqa: E402
from .saving import Exporter, SaveResult, register_exporter, save_pruned_model  # noqa: E402
from .streaming import prune_pretrained  # noqa: E402
from .gguf_export import GGUFExporter, GGUFExportOptions, GGUFResult, export_gguf  # noqa: E402  (registers export_format="gguf")
from .recovery import RecoveryConfig, recover  # noqa: E402
from . import selfgen as _selfgen  # noqa: E402,F401  (registers dataset="self")

__all__ = [
    "__version__",
    "ConfigError",
    "PruningConfig",
    "SlimGPTConfig",
    "SlimLLMConfig",
    "FLAPConfig",
    "SlimGPTPruner",
    "PruningSummary",
    "LayerReport",
    "PruningRecord",
    "BlockLayout",
    "FamilyAdapter",
    "get_adapter",
    "register_family",
    "supported_model_types",
    "PruningMethod",
    "Observer",
    "register_method",
    "unregister_method",
    "get_method",
    "register_pruned_family",
    "to_pruned_model",
    "UnusableModelError",
    "Exporter",
    "register_exporter",
    "save_pruned_model",
    "SaveResult",
    "prune_pretrained",
    "export_gguf",
    "GGUFExporter",
    "GGUFExportOptions",
    "GGUFResult",
    "RecoveryConfig",
    "recover",
]
