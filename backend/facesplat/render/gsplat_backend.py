"""Thin call into `gsplat.rasterization` (CUDA only). gsplat is imported on first use."""

from __future__ import annotations

from torch import Tensor

from .projection import EPS2D, NEAR_PLANE


def importable() -> bool:
    """Whether gsplat imports (it compiles its CUDA code only on first use, not here)."""
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, K, 3] SH if sh_degree is not None, else [N, D]
    viewmat: Tensor,  # [4, 4] world->camera, OpenCV
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [D]
    eps2d: float = EPS2D,
) -> tuple[Tensor, Tensor, dict]:  # [H, W, D], [H, W, 1], info
    import gsplat

    render, alpha, meta = gsplat.rasterization(
        means, quats, scales, opacities, colors,
        viewmat[None], K[None], width, height,
        near_plane=NEAR_PLANE, eps2d=eps2d, sh_degree=sh_degree,
        backgrounds=None if backgrounds is None else backgrounds[None],
        packed=False,  # info in the [C, N, ...] layout that DefaultStrategy reads by default
    )  # fmt: skip
    info = {key: meta[key] for key in ("means2d", "radii", "depths", "width", "height", "n_cameras", "gaussian_ids")}
    return render[0], alpha[0], info
