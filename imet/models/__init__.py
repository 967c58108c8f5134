"""imet.models: backbones by name, offline pretrained weights, the model file format."""
from imet.models.net import ImetNet, build_model
from imet.models.registry import ARCHS

__all__ = ["ARCHS", "ImetNet", "build_model"]
