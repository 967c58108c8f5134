"""Kaggle's accelerator names (kernel-metadata.json `machine_shape`, `kaggle kernels push
--accelerator`): the one table of what may be asked for and what each name gets."""
from __future__ import annotations

from imet.errors import UserError

# The default GPU ("GPU T4 x2") first: every kernel asks for it unless told otherwise.
DEFAULT = "NvidiaTeslaT4"
NONE = "none"
GPUS = {"NvidiaTeslaT4": "GPU T4 x2 (fp16 tensor cores, no fast bf16)",
        "NvidiaL4": "GPU L4", "NvidiaTeslaA100": "GPU A100", "NvidiaH100": "GPU H100"}
TPUS = {"TpuV5E8": "TPU v5e-8"}
# Accepted as the kaggle client accepts them (it warns and pushes the name unchanged); the
# server runs these sessions on the replacement.
RETIRED = {"NvidiaTeslaP100": "NvidiaTeslaT4", "TpuV38": "TpuV5E8", "Tpu1VmV38": "TpuV5E8"}


def known() -> list[str]:
    return [NONE, *GPUS, *TPUS, *RETIRED]


def canonical(name: str) -> str:
    """The name as Kaggle spells it (matched without regard to case); an unknown name is one
    line listing the known ones."""
    for spelled in known():
        if spelled.lower() == name.strip().lower():
            return spelled
    raise UserError(f"--accelerator {name!r} is not a Kaggle accelerator; use one of "
                    f"{', '.join(known())}")


def retired_warning(name: str) -> str | None:
    """One line for a retired shape: what the server runs instead."""
    if name not in RETIRED:
        return None
    instead = RETIRED[name]
    what = GPUS.get(instead) or TPUS.get(instead)
    return (f"warning: {name} is retired: Kaggle runs the session on {instead} ({what}) "
            "instead")


def runs_on(name: str) -> str:
    """The shape a session asking for `name` gets: a retired one's replacement, else itself."""
    return RETIRED.get(name, name)


def wants_gpu(name: str) -> bool:
    return runs_on(name) in GPUS


def metadata_fields(name: str) -> dict:
    """kernel-metadata.json fields asking for `name`: machine_shape, and enable_gpu /
    enable_tpu agreeing with it. `none` is the client's own empty machine_shape: a CPU."""
    shape = "" if name == NONE else name
    return {"machine_shape": shape, "enable_gpu": wants_gpu(name),
            "enable_tpu": runs_on(name) in TPUS}
