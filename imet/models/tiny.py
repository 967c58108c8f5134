"""`tiny_cnn`: a few-thousand-parameter body for CPU tests, demos and benchmarks of the engine.

It has no pretrained weights (none exist); everything else — early/late groups, BatchNorm,
the shared head — behaves like a real backbone, so the engine is exercised the same way."""
from __future__ import annotations

from torch import nn

from imet.models.registry import ArchSpec, Split


class TinyBody(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.block = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True))
        self.num_features = 2 * width


def _split_tiny(m: nn.Module) -> Split:
    return Split([m.stem], [m.block], m.num_features)


TINY_CNN = ArchSpec("tiny_cnn", "imet", TinyBody, _split_tiny, lambda: ())
