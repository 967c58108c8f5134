"""ImetNet: a pretrained body in two groups (early, late) and imet's own head; TimmNet: the same
contract for a timm body, whose groups are sets of its parameter names."""
from __future__ import annotations

import torch
from torch import nn

from imet.models.registry import TimmSpec
from imet.models.weights import get_spec, load_body_weights, resolve_weights


class Head(nn.Module):
    """Adaptive average pooling (any input size or aspect ratio) + dropout + linear. Features
    that arrive pooled already (N, C) -- timm's pre-logits -- skip the pooling."""

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 4:
            features = self.pool(features)
        return self.linear(self.dropout(torch.flatten(features, 1)))


class ImetNet(nn.Module):
    def __init__(self, arch: str, early: list, late: list, num_features: int, num_classes: int,
                 dropout: float = 0.0, info: dict | None = None):
        super().__init__()
        self.arch = arch
        self.early, self.late = nn.Sequential(*early), nn.Sequential(*late)
        self._add_head(num_features, num_classes, dropout, info)

    def _add_head(self, num_features: int, num_classes: int, dropout: float, info) -> None:
        self.head = Head(num_features, num_classes, dropout)
        self.info = dict(info or {})  # arch, num_classes, the body's mean/std/input_range, weights

    @property
    def num_classes(self) -> int:
        return self.head.linear.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(self.early(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def param_groups(self) -> dict:
        """{"early", "late", "head"} -> parameter lists, for freezing and discriminative LRs."""
        return {"early": list(self.early.parameters()), "late": list(self.late.parameters()),
                "head": list(self.head.parameters())}


class TimmNet(ImetNet):
    """A timm body (created with num_classes=0) and imet's head. timm's own forward_head pools
    (token or average, per model) and applies its pre-logits norms; imet's head follows."""

    def __init__(self, arch: str, body: nn.Module, early: list, num_features: int,
                 num_classes: int, dropout: float = 0.0, info: dict | None = None):
        nn.Module.__init__(self)
        self.arch, self.body, self.early_names = arch, body, frozenset(early)

        self._add_head(num_features, num_classes, dropout, info)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_head(self.body.forward_features(x), pre_logits=True)

    def param_groups(self) -> dict:
        named = list(self.body.named_parameters())
        return {"early": [p for n, p in named if n in self.early_names],
                "late": [p for n, p in named if n not in self.early_names],
                "head": list(self.head.parameters())}


def build_model(arch: str, num_classes: int, pretrained: bool = False, weights=None,
                search_roots=(), dropout: float = 0.0, allow_download: bool = True) -> ImetNet:
    """Build `arch` with a fresh `num_classes` head. With `pretrained` (or an explicit `weights`
    path) the body gets the official ImageNet weights, found by `resolve_weights`."""
    spec = get_spec(arch)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    body = spec.construct()
    weights_file = None
    if pretrained or weights is not None:
        weights_file = resolve_weights(arch, explicit=weights, search_roots=search_roots,
                                       allow_download=allow_download)
        load_body_weights(body, spec, weights_file)
    split = spec.split(body)
    info = {"arch": arch, "num_classes": num_classes, "source": spec.source,
            "weights": str(weights_file) if weights_file else None, **spec.input_settings()}
    if isinstance(spec, TimmSpec):
        info["timm"] = spec.record()
        return TimmNet(arch, body, split.early, split.num_features, num_classes, dropout, info)
    return ImetNet(arch, split.early, split.late, split.num_features, num_classes, dropout, info)
