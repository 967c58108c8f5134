"""Architectures by name: how to build each body without weights, where its official weights
live, how its layers split into early/late groups, and which input normalization it expects.

Bodies are constructed with `pretrained=None` / `weights=None` so that building never touches
the network; `imet.models.weights` finds and loads the official file itself (offline first).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from imet.data.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Split:
    """A body cut in two groups plus the width of its pooled feature vector."""

    early: list
    late: list
    num_features: int


@dataclass(frozen=True)
class ArchSpec:
    name: str
    source: str  # "pretrainedmodels" | "torchvision"
    construct: Callable[[], nn.Module]
    split: Callable[[nn.Module], Split]
    urls: Callable[[], tuple]  # official download URLs; the first is the one downloaded
    # Weight-file keys of the classifier that imet replaces with its own head.
    classifier_prefixes: tuple = ("last_linear.", "fc.", "classifier.")
    fix_keys: Callable[[dict], dict] | None = None
    settings: Callable[[], dict] = field(default=lambda: {})

    def filenames(self) -> tuple:
        """Official file names (basenames of the URLs), in preference order."""
        return tuple(url.rsplit("/", 1)[-1] for url in self.urls())

    def input_settings(self) -> dict:
        """mean/std/input_range/input_space the pretrained weights were trained with."""
        out = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
               "input_range": [0, 1], "input_space": "RGB"}
        out.update(self.settings())
        return out


def _quiet(fn: Callable[[], nn.Module]) -> nn.Module:
    # pretrainedmodels calls torchvision's legacy `pretrained=False`, which warns on every build.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


# ---- pretrainedmodels -------------------------------------------------------------------------

def _pm_constructor(name: str) -> Callable[[], nn.Module]:
    def construct() -> nn.Module:
        import pretrainedmodels  # lazy: importing it builds nothing but takes time

        return _quiet(lambda: pretrainedmodels.__dict__[name](num_classes=1000, pretrained=None))
    return construct


def _pm_settings(name: str) -> dict:
    import pretrainedmodels

    return pretrainedmodels.pretrained_settings[name]["imagenet"]


def _pm_urls(name: str, extra: tuple = ()) -> Callable[[], tuple]:
    return lambda: (_pm_settings(name)["url"],) + extra


def _pm_input_settings(name: str) -> Callable[[], dict]:
    def settings() -> dict:
        s = _pm_settings(name)
        return {k: list(s[k]) if isinstance(s[k], (list, tuple)) else s[k]
                for k in ("mean", "std", "input_range", "input_space")}
    return settings


def _classifier(m: nn.Module, torchvision_name: str) -> nn.Module:
    # pretrainedmodels renames torchvision's classifier to `last_linear`.
    return m.last_linear if hasattr(m, "last_linear") else getattr(m, torchvision_name)


def _split_senet(m: nn.Module) -> Split:
    return Split([m.layer0, m.layer1, m.layer2], [m.layer3, m.layer4], m.last_linear.in_features)


def _split_resnet(m: nn.Module) -> Split:
    classifier = _classifier(m, "fc")
    stem = [m.conv1, m.bn1, m.relu, m.maxpool]
    return Split(stem + [m.layer1, m.layer2], [m.layer3, m.layer4], classifier.in_features)


def _split_densenet(m: nn.Module) -> Split:
    classifier = _classifier(m, "classifier")
    names = [name for name, _ in m.features.named_children()]
    cut = names.index("denseblock3")
    children = list(m.features.children())
    # DenseNet's forward applies a ReLU after `features`; it belongs to the body.
    return Split(children[:cut], children[cut:] + [nn.ReLU(inplace=True)], classifier.in_features)


_DENSE_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _fix_densenet_keys(state: dict) -> dict:
    # Files published before torchvision 0.3 name layers 'norm.1'; modules now say 'norm1'.
    out = {}
    for key, value in state.items():
        match = _DENSE_OLD_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


# ---- torchvision ------------------------------------------------------------------------------

def _tv_constructor(name: str) -> Callable[[], nn.Module]:
    def construct() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    return construct


def _tv_urls(name: str, extra: tuple = ()) -> Callable[[], tuple]:
    def urls() -> tuple:
        import torchvision

        return (torchvision.models.get_model_weights(name).IMAGENET1K_V1.url,) + extra
    return urls


def _split_features(late_from: int) -> Callable[[nn.Module], Split]:
    """Nets with a `features` Sequential and a classifier ending in a Linear layer."""
    def split(m: nn.Module) -> Split:
        children = list(m.features.children())
        linears = [mod for mod in m.classifier.modules() if isinstance(mod, nn.Linear)]
        return Split(children[:late_from], children[late_from:], linears[0].in_features)
    return split


def _pm(name: str, split, extra_urls: tuple = (), fix_keys=None) -> ArchSpec:
    return ArchSpec(name, "pretrainedmodels", _pm_constructor(name), split,
                    _pm_urls(name, extra_urls), fix_keys=fix_keys,
                    settings=_pm_input_settings(name))


def _tv(name: str, split, extra_urls: tuple = ()) -> ArchSpec:
    return ArchSpec(name, "torchvision", _tv_constructor(name), split, _tv_urls(name, extra_urls))


_TV_RESNET34 = "https://download.pytorch.org/models/resnet34-b627a593.pth"
_TV_RESNET50 = "https://download.pytorch.org/models/resnet50-0676ba61.pth"

ARCHS: dict[str, ArchSpec] = {
    spec.name: spec for spec in [
        _pm("se_resnext50_32x4d", _split_senet),
        _pm("se_resnext101_32x4d", _split_senet),
        _pm("se_resnet50", _split_senet),
        _pm("se_resnet101", _split_senet),
        _pm("se_resnet152", _split_senet),
        _pm("senet154", _split_senet),
        _pm("densenet121", _split_densenet, fix_keys=_fix_densenet_keys),
        _pm("densenet161", _split_densenet, fix_keys=_fix_densenet_keys),
        _pm("densenet169", _split_densenet, fix_keys=_fix_densenet_keys),
        _pm("densenet201", _split_densenet, fix_keys=_fix_densenet_keys),
        # torchvision's own file for the same architecture is accepted too (same keys).
        _pm("resnet34", _split_resnet, extra_urls=(_TV_RESNET34,)),
        _pm("resnet50", _split_resnet, extra_urls=(_TV_RESNET50,)),
        _tv("resnet18", _split_resnet),
        _tv("mobilenet_v3_small", _split_features(9)),
        _tv("mobilenet_v3_large", _split_features(13)),
        _tv("efficientnet_b0", _split_features(6)),
    ]
}

# A CPU-sized body for tests, demos and engine benchmarks (imet/models/tiny.py). Imported here,
# after ArchSpec exists, so every lookup of ARCHS knows it.
from imet.models.tiny import TINY_CNN  # noqa: E402

ARCHS[TINY_CNN.name] = TINY_CNN
