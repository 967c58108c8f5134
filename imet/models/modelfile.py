"""model.pt: a trained model as plain data (no pickled modules), loadable with weights_only=True;
a run keeps its best one as RUN/model.pt (MODEL_FILE).

{"format": "imet-model", "version": 1, "arch", "config", "labels": LabelSpace.to_dict(),
 "state_dict", "extra"[, "timm": {"model", "tag", "version"}]} -- the architecture is rebuilt by
name, so a file attached from a dataset can be loaded without trusting arbitrary code in it. A
timm body is rebuilt from the full model name it trained with (name.tag), not from --arch, whose
default tag a newer timm may change."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from imet.data.labels import LabelSpace
from imet.errors import CheckpointError, UserError
from imet.fileio import atomic_torch_save
from imet.models.net import ImetNet, build_model
from imet.models.registry import TIMM_PREFIX, timm_version
from imet.models.weights import get_spec, load_problem

MODEL_FILE = "model.pt"
FORMAT = "imet-model"
VERSION = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The ImetNet inside DataParallel/DistributedDataParallel or torch.compile wrappers."""
    while hasattr(model, "_orig_mod") or isinstance(
            model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model._orig_mod if hasattr(model, "_orig_mod") else model.module
    return model


def plain(value, where: str = "config"):
    """`value` as str/int/float/bool/None/list/dict only: anything else would save but then fail
    to load with weights_only=True. Paths become str, tuples lists, numpy scalars Python ones."""
    if value is None or isinstance(value, bool):
        return value
    for kind in (int, float, str):  # exact types: np.float64 subclasses float but is refused
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        return value.item()
    raise TypeError(f"{where} holds a {type(value).__name__}; model files store plain data only")


def save_model_file(path, model: nn.Module, arch: str, config: dict, labels: LabelSpace,
                    extra: dict | None = None) -> Path:
    net = unwrap(model)
    num_classes = getattr(net, "num_classes", None)
    if num_classes is not None and num_classes != labels.num_classes:
        raise ValueError(f"model has {num_classes} outputs but the label space "
                         f"{labels.num_classes}")
    # CPU + contiguous: loadable on a CPU-only machine, whatever memory format trained it.
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "arch": arch, "config": plain(config),
               "labels": labels.to_dict(), "state_dict": state,
               "extra": plain(extra or {}, "extra")}
    if getattr(net, "info", {}).get("timm"):
        payload["timm"] = plain(net.info["timm"], "timm")
    atomic_torch_save(payload, path)
    return Path(path)


def model_file_of(run: Path) -> Path:
    """RUN/model.pt, or the file itself when given a file (predict, validate, --init)."""
    run = Path(run)
    if run.is_dir():
        if not (run / MODEL_FILE).is_file():
            raise CheckpointError(f"{run / MODEL_FILE}: model file not found; train the run to "
                                  "its end (`imet train`) or pass the model file's path")
        return run / MODEL_FILE
    if not run.exists():
        raise CheckpointError(f"{run}: run folder or model file not found; fix the path")
    return run


def read_model_file(path) -> dict:
    """The payload of a model file, validated; CheckpointError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found; pass the model.pt of a finished run")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not an imet model file or corrupt ({load_problem(exc)}); "
                              f"pass the model.pt written by `imet train`")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an imet model file (no format 'imet-model'); "
                              f"pass the model.pt written by `imet train`")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: imet model file version {payload.get('version')!r}, this "
                              f"imet reads version {VERSION}; use the imet that wrote it")
    missing = [k for k in ("arch", "config", "labels", "state_dict") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: imet model file lacks {', '.join(missing)}; it is damaged")
    return payload


def load_model_file(path, device="cpu") -> tuple[ImetNet, dict]:
    """(model in eval mode on `device`, info) where info holds arch, config, labels (a
    LabelSpace), extra, the timm record (None for other archs), and the model's input settings
    (mean/std, interpolation)."""
    path = Path(path)
    payload = read_model_file(path)
    try:
        labels = LabelSpace.from_dict(payload["labels"])
    except Exception as exc:
        raise CheckpointError(f"{path}: label space unreadable ({exc}); the file is damaged")
    config = payload["config"]
    model = build_model(_body_arch(path, payload), labels.num_classes, pretrained=False,
                        dropout=float(config.get("dropout", 0.0) or 0.0))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {payload['arch']} "
                              f"({' '.join(str(exc).split())[:200]}); the file is damaged or "
                              "from another imet version")

    model.to(device).eval()
    model.arch = model.info["arch"] = payload["arch"]
    info = {"path": str(path), "arch": payload["arch"], "timm": payload.get("timm"),
            "config": config, "labels": labels, "extra": payload.get("extra", {}),
            "version": payload["version"], "interpolation": model.info.get("interpolation"),
            **{k: model.info[k] for k in ("mean", "std", "input_range", "input_space")}}
    return model, info


def _body_arch(path: Path, payload: dict) -> str:
    """The arch to build: the recorded full timm name for a timm body, else the file's arch.
    CheckpointError in one line when this imet or this timm cannot build it."""
    arch = payload["arch"]
    if not str(arch).startswith(TIMM_PREFIX):
        try:
            get_spec(arch)
        except UserError:
            raise CheckpointError(f"{path}: architecture {arch!r} is unknown to this imet; "
                                  f"use the imet version that wrote the file")
        return arch
    record = payload.get("timm") or {}
    body = TIMM_PREFIX + str(record.get("model") or arch[len(TIMM_PREFIX):])
    try:
        get_spec(body)
    except UserError:
        here = timm_version()
        raise CheckpointError(f"{path}: trained with timm {record.get('version', '?')} model "
                              f"{body[len(TIMM_PREFIX):]}, which timm {here} does not know; "
                              f"install timm>={record.get('version', here)}")
    return body
