"""The one device decision: which torch device a run uses. The rasterizer backend follows from
the tensors' device (`backend_for`), so only the device travels through the pipeline."""

from __future__ import annotations

import sys

import torch

from ..errors import DeviceError


def choose_device(name: str, say=lambda msg: print(msg, file=sys.stderr)) -> torch.device:
    """`auto` picks CUDA when present, else CPU (and says so); explicit names are checked."""
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
            say(f"device: cuda ({torch.cuda.get_device_name(0)}), {backend_for(device)} renderer")
            return device
        say(f"device: cpu (no CUDA GPU found), {backend_for('cpu')} renderer")
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


def backend_for(device: torch.device | str) -> str:
    """The rasterizer backend `rasterize(backend="auto")` uses for tensors on `device`."""
    from . import available_backends, device_of_backend

    kind = torch.device(device).type
    return next(b for b in available_backends() if device_of_backend(b, kind) == kind)
