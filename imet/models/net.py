"""ImetNet: a pretrained body in two groups (early, late) and imet's own head."""
from __future__ import annotations

import torch
from torch import nn

from imet.models.weights import get_spec, load_body_weights, resolve_weights


class Head(nn.Module):
    """Adaptive average pooling (any input size or aspect ratio) + dropout + linear."""

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(torch.flatten(self.pool(features), 1)))


class ImetNet(nn.Module):
    def __init__(self, arch: str, early: list, late: list, num_features: int, num_classes: int,
                 dropout: float = 0.0, info: dict | None = None):
        super().__init__()
        self.arch = arch
        self.early = nn.Sequential(*early)
        self.late = nn.Sequential(*late)
        self.head = Head(num_features, num_classes, dropout)
        # arch, num_classes, mean/std/input_range the body expects, weights file used.
        self.info = dict(info or {})

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

    def freeze_body(self, frozen: bool = True) -> None:
        """Stage 1 trains the head only. BatchNorm statistics of a frozen body are left to the
        caller's train()/eval() choice."""
        for p in list(self.early.parameters()) + list(self.late.parameters()):
            p.requires_grad_(not frozen)


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
    return ImetNet(arch, split.early, split.late, split.num_features, num_classes, dropout, info)
