"""Architectures by name (pretrainedmodels and torchvision bodies, the test body `tiny_cnn`, and
any `timm:<name>`): how to build each body without weights, where its official weights live,
how its layers split into early/late groups, and which input normalization it expects. Bodies
are built with `pretrained=None` / `weights=None`, never touching the network;
`imet.models.weights` finds and loads the official file itself (offline first)."""
from __future__ import annotations

import difflib
import functools
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from imet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from imet.errors import UserError


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
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input_range": [0, 1],
                "input_space": "RGB", **self.settings()}


# ---- pretrainedmodels -------------------------------------------------------------------------

def _pm_settings(name: str) -> dict:
    import pretrainedmodels  # lazy: importing it builds nothing but takes time

    return pretrainedmodels.pretrained_settings[name]["imagenet"]


def _pm(name: str, split, extra_urls: tuple = (), fix_keys=None) -> ArchSpec:
    def construct() -> nn.Module:
        import pretrainedmodels

        # pretrainedmodels calls torchvision's legacy `pretrained=False`: a warning per build.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pretrainedmodels.__dict__[name](num_classes=1000, pretrained=None)

    def settings() -> dict:
        s = _pm_settings(name)
        return {k: list(s[k]) if isinstance(s[k], (list, tuple)) else s[k]
                for k in ("mean", "std", "input_range", "input_space")}

    return ArchSpec(name, "pretrainedmodels", construct, split,
                    lambda: (_pm_settings(name)["url"],) + extra_urls, fix_keys=fix_keys,
                    settings=settings)


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
    # Files published before torchvision 0.3 name layers 'norm.1'; later torchvision says 'norm1'.
    return {_DENSE_OLD_KEY.sub(r"\1\2", key): value for key, value in state.items()}


# ---- torchvision ------------------------------------------------------------------------------

def _tv(name: str, split, extra_urls: tuple = ()) -> ArchSpec:
    def construct() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    def urls() -> tuple:
        import torchvision

        return (torchvision.models.get_model_weights(name).IMAGENET1K_V1.url,) + extra_urls

    return ArchSpec(name, "torchvision", construct, split, urls)


def _split_features(late_from: int) -> Callable[[nn.Module], Split]:
    """Nets with a `features` Sequential and a classifier ending in a Linear layer."""
    def split(m: nn.Module) -> Split:
        children = list(m.features.children())
        linear = next(mod for mod in m.classifier.modules() if isinstance(mod, nn.Linear))
        return Split(children[:late_from], children[late_from:], linear.in_features)
    return split


class TinyBody(nn.Module):
    """`tiny_cnn`: a few-thousand-parameter body for CPU tests, demos and benchmarks. It has no
    pretrained weights (none exist); everything else (early/late groups, BatchNorm, the shared
    head) behaves like a real backbone, so the engine is exercised the same way."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.block = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True))
        self.num_features = 2 * width




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
        ArchSpec("tiny_cnn", "imet", TinyBody, lambda m: Split([m.stem], [m.block], m.num_features),
                 lambda: ()),
    ]
}


# ---- timm -------------------------------------------------------------------------------------
# `timm:<name>` is any model timm knows, built without weights, split into early/late groups
# from its own stage list, with the input settings of its pretrained config. timm is asked at
# call time (its model list, its pretrained configs); imet keeps no list of its own, so a newer
# timm brings its new models with it.

TIMM_PREFIX = "timm:"


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("--arch timm:...: timm is not installed; pip install timm (Kaggle's "
                        "image has it)")
    return timm


def timm_version() -> str:
    return _timm().__version__


@dataclass(frozen=True)
class TimmSpec(ArchSpec):
    """An ArchSpec whose body comes from timm. `model` is timm's full name with the pretrained
    tag (resnet18.a1_in1k): the exact body and weights, recorded in the model file."""

    model: str = ""
    tag: str | None = None
    hf_hub_id: str | None = None
    url: str | None = None

    def filenames(self) -> tuple:
        """Weight-file names looked for, in preference order: the flat name `weights fetch`
        writes, the Hugging Face hub's names, then the legacy download's basename."""
        names = [f"{self.model}.safetensors", "model.safetensors", "pytorch_model.bin"]
        if self.url and not self.url.endswith(".npz"):  # .npz: JAX originals, not loadable
            names.append(self.url.rsplit("/", 1)[-1].split("?")[0])
        return tuple(names)

    def hub_folder(self) -> str | None:
        """The hub cache's folder name for this model: models--timm--resnet18.a1_in1k."""
        return "models--" + self.hf_hub_id.replace("/", "--") if self.hf_hub_id else None

    def record(self) -> dict:
        """What a model file keeps to rebuild exactly this body."""
        return {"model": self.model, "tag": self.tag, "version": timm_version()}


def _pretrained_cfg(name: str) -> dict:
    """timm's pretrained config of `name` (default tag when none given); UserError with close
    matches for a name or tag timm does not know."""
    timm = _timm()
    base, _, tag = name.partition(".")
    if not timm.is_model(base):
        near = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
        raise UserError(f"--arch {TIMM_PREFIX}{name}: timm {timm.__version__} has no model "
                        f"{base!r}; " + (f"close matches: {', '.join(near)}" if near
                                         else "see timm.list_models()"))
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None and tag:
        tags = timm.list_pretrained(f"{base}.*")
        raise UserError(f"--arch {TIMM_PREFIX}{name}: timm {timm.__version__} has no pretrained "
                        f"tag {tag!r} for {base}; choose one of {', '.join(tags) or '(none)'}")
    return cfg.to_dict() if cfg is not None else {}


def _timm_constructor(model: str, fixed_size: bool):
    def construct() -> nn.Module:
        # num_classes=0: timm's classifier becomes an Identity; imet adds its own head.
        create = _timm().create_model
        if fixed_size:  # ViT, EVA...: interpolate the position embedding to --image-size
            try:
                return create(model, pretrained=False, num_classes=0, dynamic_img_size=True)
            except TypeError:  # a model without that option keeps its fixed size
                pass
        return create(model, pretrained=False, num_classes=0)
    return construct


@functools.lru_cache(maxsize=None)
def timm_spec(arch: str) -> TimmSpec:
    """The spec of `timm:<name>` (UserError for an unknown name or tag)."""
    name = arch[len(TIMM_PREFIX):]
    if not name:
        raise UserError(f"--arch {arch}: name a timm model, e.g. timm:convnext_tiny.fb_in1k")
    cfg = _pretrained_cfg(name)
    base, tag = name.partition(".")[0], cfg.get("tag") or None
    model = f"{base}.{tag}" if tag else base
    classifiers = cfg.get("classifier") or "fc"
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    return TimmSpec(arch, "timm", _timm_constructor(model, bool(cfg.get("fixed_input_size"))),
                    split_timm, lambda: (), classifier_prefixes=tuple(f"{n}." for n in classifiers),
                    settings=lambda: {
                        "input_range": [0, 1], "input_space": "RGB",
                        "interpolation": cfg.get("interpolation") or "bilinear",
                        **{k: [float(v) for v in cfg[k]] for k in ("mean", "std") if cfg.get(k)}},
                    model=model, tag=tag, hf_hub_id=cfg.get("hf_hub_id"), url=cfg.get("url"))


def early_parameter_names(body: nn.Module) -> tuple:
    """Names of the body parameters in the early group: everything up to the end of the middle
    stage of timm's `feature_info` (resnet: stem, layer1, layer2; ViT: patch embedding and the
    first half of the blocks); the later stages, final norms and pooling go late."""
    names = [n for n, _ in body.named_parameters()]
    stages = [info["module"] for info in getattr(body, "feature_info", None) or []]
    if len(stages) < 2:  # no stage list: split the top-level modules holding parameters
        stages = [n for n, m in body.named_children() if any(True for _ in m.parameters())]
    last_early = stages[(len(stages) + 1) // 2 - 1]
    inside = [i for i, n in enumerate(names) if n.startswith(last_early + ".")]
    if not inside or inside[-1] + 1 >= len(names):
        raise UserError(f"timm body {type(body).__name__}: cannot split its stages into early "
                        f"and late groups")
    return tuple(names[:inside[-1] + 1])


def split_timm(body: nn.Module) -> Split:
    """early: parameter names (see early_parameter_names); late: the remaining body parameters'
    names; num_features: the width of timm's pooled pre-logits output."""
    early = early_parameter_names(body)
    chosen = set(early)
    late = [n for n, _ in body.named_parameters() if n not in chosen]
    width = getattr(body, "head_hidden_size", None) or body.num_features
    return Split(list(early), late, int(width))

