"""imet.models: backbones by name, offline pretrained weights, the model file format."""


from imet.models.net import Head, ImetNet, build_model
from imet.models.registry import ARCHS, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ARCHS", "Head", "IMAGENET_MEAN", "IMAGENET_STD", "ImetNet", "build_model"]
