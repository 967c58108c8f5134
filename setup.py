"""imet: a Kaggle-kernel-native PyTorch pipeline for iMet Collection 2019 (FGVC6)."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "torch>=2.1",
    "torchvision>=0.16",
    "pretrainedmodels==0.7.4",
    # timm:<name> archs; 0.9 brought pretrained tags, feature_info everywhere, forward_head.
    "timm>=0.9",
    "safetensors>=0.4",  # pickle-free weight files
    "huggingface_hub>=0.20",  # imet weights fetch; timm's hub cache layout
    "six>=1.16",
    "albumentations>=2.0,<3",
    "pandas>=2.0",
    "numpy>=1.24",
    "scikit-learn>=1.3",
    "iterative-stratification>=0.1.9",
    "python-telegram-bot>=22,<23",
    "delegator.py>=0.1.1",
    "tqdm>=4.66",
    "matplotlib>=3.7",
    "pillow>=10",
]

DEV_REQUIRES = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "pytest-xdist>=3.5",
    "kaggle>=1.6",
    "scikit-image>=0.22",
    "build>=1.0",
    "wheel>=0.42",
]

setup(
    name="imet",
    version="0.1.0",
    description="Kaggle-kernel-native PyTorch pipeline for the iMet Collection 2019 (FGVC6) task",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["imet", "imet.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": DEV_REQUIRES},
    entry_points={"console_scripts": ["imet=imet.cli:main"]},
)
