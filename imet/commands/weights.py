"""`imet weights fetch ARCH [ARCH ...] --out DIR --owner NAME`: the official pretrained weights
of each arch in one folder ready for `kaggle datasets create -p DIR` (run it online)."""
from __future__ import annotations

import argparse
import os

URL_BASE_ENV = "IMET_WEIGHTS_URL_BASE"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Download pretrained ImageNet weights on an online machine into a flat folder that "
        "`kaggle datasets create -p DIR` uploads as it is (dataset <owner>/imet-weights). timm "
        "archs come from the Hugging Face hub (HF_ENDPOINT is honoured), pretrainedmodels and "
        "torchvision archs from their official URLs. weights-manifest.json records the sha256, "
        "size and source of every file. Interrupted, the same command resumes: finished files "
        "are kept, a cut URL download continues where it stopped. Attach the dataset to a kernel "
        "and `imet train --pretrained` finds the files under the input root.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    fetch = sub.add_parser("fetch", help="download the weights of some archs into DIR",
                           description=parser.description)
    fetch.add_argument("archs", nargs="+", metavar="ARCH",
                       help="e.g. se_resnext50_32x4d, resnet18, timm:convnext_tiny.fb_in1k")
    fetch.add_argument("--out", required=True, metavar="DIR", help="the dataset folder to fill")
    fetch.add_argument("--owner", required=True, metavar="NAME",
                       help="Kaggle user that owns the dataset (its id: NAME/imet-weights)")
    fetch.add_argument("--url-base", default=os.environ.get(URL_BASE_ENV), metavar="URL",
                       help=f"fetch pretrainedmodels/torchvision files from URL/<file name> "
                            f"instead of their official hosts (default: ${URL_BASE_ENV})")


def run(args) -> int:
    from imet.models.fetch import MANIFEST, fetch_weights

    manifest = fetch_weights(args.archs, args.out, args.owner, url_base=args.url_base,
                             log=lambda line: print(line, flush=True))
    total = sum(entry["size"] for entry in manifest["files"].values())
    print(f"{args.out}: {len(manifest['files'])} weight files ({total / 2 ** 20:.1f} MiB), "
          f"{MANIFEST} and dataset-metadata.json; upload with "
          f"`kaggle datasets create -p {args.out}`")
    return 0
