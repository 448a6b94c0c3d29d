"""Choose the compute device and the renderer that goes with it."""

from __future__ import annotations

import sys

import torch

from .errors import DeviceError


def resolve_device(name: str, say=lambda msg: print(msg, file=sys.stderr)) -> torch.device:
    """`auto` picks CUDA when present, else CPU (and says so); explicit names are checked."""
    if name == "auto":
        if torch.cuda.is_available():
            say(f"device: cuda ({torch.cuda.get_device_name(0)}), gsplat renderer")
            return torch.device("cuda")
        say("device: cpu (no CUDA GPU found), compiled CPU renderer")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for but no CUDA GPU is available to PyTorch; "
                              "use --device cpu (or auto), or install a CUDA build of torch")
        return torch.device("cuda")
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("--device mps was asked for but Apple's Metal backend is not available; use --device cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"unknown device {name!r}; use auto, cuda, cpu or mps")


def renderer_for(device: torch.device) -> str:
    return {"cuda": "gsplat", "mps": "torch"}.get(device.type, "cpu")
