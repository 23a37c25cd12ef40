"""PyTorch modules for the models of "Do deep neural networks utilize the weight space
efficiently?" (arXiv 2401.16438) as the pe-workspace trains them: PE models use one weight matrix
as `W` and `Wᵀ`. State-dict names are those of the Rust models (torchvision's and timm's for the
untied layers), so the weights a `pe` run writes load strictly.

    model = pe_models.load("runs/fmnist_vit_pe_mini")         # a run's best (else last) checkpoint
    model = pe_models.create_model("vit_pe_small", num_classes=100)
    model = timm.create_model("pe_vit_pe_small")              # with timm installed
"""

from .checkpoints import CheckpointError
from .config import ConfigError, ModelConfig, ResNetConfig, VitConfig
from .factory import build, create_model, load, model_config
from .preprocessing import Preprocessing
from .presets import list_models, preset
from .resnet import ResNet
from .vit import Vit
from .weights import StrictLoadError

__all__ = [
    "CheckpointError", "ConfigError", "ModelConfig", "Preprocessing", "ResNet", "ResNetConfig",
    "StrictLoadError", "Vit", "VitConfig", "build", "create_model", "list_models", "load", "model_config",
    "preset",
]
__version__ = "0.1.0"

try:
    import timm  # noqa: F401  (optional: registering is all pe_models does with it)
except ImportError:
    pass
else:
    from . import timm_models

    timm_models.register()
