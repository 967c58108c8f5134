"""`timm:<name>` architectures: any model timm knows, built without weights, split into
early/late groups from its own stage list, with the input settings of its pretrained config.

timm is asked at call time (its model list, its pretrained configs); imet keeps no list of its
own, so a newer timm brings its new models with it."""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass

from torch import nn

from imet.errors import UserError
from imet.models.registry import ArchSpec, Split

PREFIX = "timm:"


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("--arch timm:...: timm is not installed; pip install timm (Kaggle's "
                        "image has it)")
    return timm


def timm_version() -> str:
    return _timm().__version__


def _close(name: str, choices: list, what: str) -> str:
    near = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    return f"close matches: {', '.join(near)}" if near else f"see timm.list_{what}()"


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
        raise UserError(f"--arch {PREFIX}{name}: timm {timm.__version__} has no model {base!r}; "
                        f"{_close(base, timm.list_models(), 'models')}")
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None and tag:
        tags = timm.list_pretrained(f"{base}.*")
        raise UserError(f"--arch {PREFIX}{name}: timm {timm.__version__} has no pretrained tag "
                        f"{tag!r} for {base}; choose one of {', '.join(tags) or '(none)'}")
    return cfg.to_dict() if cfg is not None else {}


def _construct(model: str, fixed_size: bool):
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


def _settings(cfg: dict):
    def settings() -> dict:
        out = {"input_range": [0, 1], "input_space": "RGB",
               "interpolation": cfg.get("interpolation") or "bilinear"}
        for key in ("mean", "std"):
            if cfg.get(key):
                out[key] = [float(v) for v in cfg[key]]
        return out
    return settings


def _classifier_prefixes(cfg: dict) -> tuple:
    names = cfg.get("classifier") or "fc"
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


@functools.lru_cache(maxsize=None)
def timm_spec(arch: str) -> TimmSpec:
    """The spec of `timm:<name>` (UserError for an unknown name or tag)."""
    name = arch[len(PREFIX):]
    if not name:
        raise UserError(f"--arch {arch}: name a timm model, e.g. timm:convnext_tiny.fb_in1k")
    cfg = _pretrained_cfg(name)
    base = name.partition(".")[0]
    tag = cfg.get("tag") or None
    model = f"{base}.{tag}" if tag else base
    construct = _construct(model, bool(cfg.get("fixed_input_size")))
    return TimmSpec(arch, "timm", construct, split_timm, lambda: (),
                    classifier_prefixes=_classifier_prefixes(cfg), settings=_settings(cfg),
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
