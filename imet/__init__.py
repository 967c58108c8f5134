"""imet: a Kaggle-kernel-native PyTorch pipeline for iMet Collection 2019 (FGVC6)."""

__version__ = "0.1.0"
