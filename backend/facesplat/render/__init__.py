"""Differentiable Gaussian rasterization: one call, several backends.

- "gsplat": gsplat's CUDA kernels (CUDA tensors, gsplat installed);
- "cpu": numba kernels with analytic backwards, projection to compositing (CPU tensors);
- "torch": plain PyTorch with autograd; the reference, and the route on Apple MPS.

All three follow gsplat's conventions (see `projection.py`) and return gsplat's unpacked `info`,
so one densification strategy (strategy.py) serves them all.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor

from ..errors import DeviceError
from .projection import EPS2D, make_info

BACKENDS = ("gsplat", "cpu", "torch")
_DEVICE_OF = {"gsplat": "cuda", "cpu": "cpu"}  # the torch backend runs on any device


def device_of_backend(backend: str, device: str) -> str:
    """The device type a backend renders on (the torch backend renders on any)."""
    return _DEVICE_OF.get(backend, device)


def available_backends() -> list[str]:
    """Backends usable in this environment, in the order "auto" prefers them."""
    return list(_available())


@functools.cache
def _available() -> tuple[str, ...]:
    found = []
    if torch.cuda.is_available():
        from . import gsplat_backend  # only here, with CUDA, is gsplat ever imported

        if gsplat_backend.importable():
            found.append("gsplat")
    if importlib.util.find_spec("numba") is not None:
        found.append("cpu")
    found.append("torch")
    return tuple(found)


def rasterize(
    means: Tensor,  # [N, 3] world positions
    quats: Tensor,  # [N, 4] w, x, y, z; normalised inside
    scales: Tensor,  # [N, 3] activated (exp'ed)
    opacities: Tensor,  # [N] activated (sigmoid'ed)
    colors: Tensor,  # [N, K, 3] SH coefficients if sh_degree is not None, else [N, D] features
    viewmat: Tensor,  # [4, 4] world->camera, OpenCV axes (x right, y down, z forward)
    K: Tensor,  # [3, 3] pinhole intrinsics in pixels
    width: int,
    height: int,
    sh_degree: int | None = None,  # use the first (sh_degree + 1)^2 coefficients of `colors`
    backgrounds: Tensor | None = None,  # [D] composited behind: image = sum w c + T * bg
    backend: str = "auto",  # "auto" | "gsplat" | "cpu" | "torch"
    tile_mask: Tensor | None = None,  # [ceil(H/16), ceil(W/16)] bool: render only these 16x16 tiles
    pixel_stride: int = 1,  # K samples every this-many-th pixel of a finer camera (strided_camera)
) -> tuple[Tensor, Tensor, dict]:
    """Render one view. Returns render [H, W, D], alpha [H, W, 1] and gsplat's `info`:
    means2d [1, N, 2] (in the graph; call .retain_grad() before backward), radii [1, N, 2] int32
    (0 = culled), depths [1, N], width, height, n_cameras = 1, gaussian_ids = None.

    "auto" picks gsplat for CUDA tensors when it imports, cpu for CPU tensors, else torch (MPS,
    or CUDA without gsplat).

    `tile_mask` (cpu and torch backends) leaves the other tiles empty: background colour, alpha 0,
    no gradient, and Gaussians drawn in no selected tile report radii 0. gsplat renders every
    tile regardless (on a GPU the saving is not worth a second code path): a caller must weigh
    its loss so that the pixels outside the mask do not count.

    `pixel_stride` s: K is `strided_camera(K_fine, s, ...)`, and the image is exactly the fine
    camera's image at every s-th pixel (its pixel blur, EPS2D fine pixels^2, is EPS2D / s^2 here).
    """
    N = means.shape[0]
    assert means.shape == (N, 3), means.shape
    assert quats.shape == (N, 4), quats.shape
    assert scales.shape == (N, 3), scales.shape
    assert opacities.shape == (N,), opacities.shape
    if sh_degree is None:
        assert colors.dim() == 2 and colors.shape[0] == N, colors.shape
    else:
        assert 0 <= sh_degree <= 3, sh_degree
        assert colors.dim() == 3 and colors.shape[0] == N and colors.shape[2] == 3, colors.shape
        assert colors.shape[1] >= (sh_degree + 1) ** 2, (colors.shape, sh_degree)
    assert viewmat.shape == (4, 4), viewmat.shape
    assert K.shape == (3, 3), K.shape
    if backgrounds is not None:
        assert backgrounds.shape == (colors.shape[-1],), backgrounds.shape

    device = means.device.type
    usable = [b for b in available_backends() if device_of_backend(b, device) == device]
    if backend == "auto":
        backend = usable[0]
    elif backend not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    elif backend not in usable:
        raise DeviceError(
            f"rasterizer backend {backend!r} cannot render {device} tensors here. "
            f"Try backend='auto' (usable: {', '.join(usable)})."
        )

    if backend == "gsplat":
        from . import gsplat_backend

        return gsplat_backend.rasterize(means, quats, scales, opacities, colors, viewmat, K, width, height,
                                        sh_degree, backgrounds, eps2d=EPS2D / pixel_stride ** 2)
    if backend == "cpu":  # numba kernels throughout
        from .cpu_backend import composite
        from .cpu_projection import prepare
    else:  # plain PyTorch: projection.py and torch_backend.py
        from .projection import prepare
        from .torch_backend import composite
    p = prepare(means, quats, scales, opacities, colors, viewmat, K, width, height, sh_degree, tile_mask,
                eps2d=EPS2D / pixel_stride ** 2)
    render, alpha = composite(p.means2d[0], p.conics, p.opacities, p.features, p.tile_offsets, p.gauss_ids,
                              width, height, backgrounds)
    return render, alpha, make_info(p, width, height)
