"""Gaussian parameters: initialisation from sparse points, and conversion to/from core Splats.

Raw storage follows gsplat: means, log scales, wxyz quats, logit opacities, SH in sh0 [N, 1, 3]
and shN [N, K, 3]. Activations happen only at the render call.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from .core.ply import Splats, rgb_to_sh0
from .errors import StageError


def init_splats(xyz: np.ndarray, rgb: np.ndarray, sh_degree: int, device: str | torch.device,
                init_opacity: float = 0.1) -> torch.nn.ParameterDict:
    """One Gaussian per sparse point: colour from the point, isotropic scale from the mean
    distance to its 3 nearest neighbours (as in 3DGS)."""
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    n = len(xyz)
    if n == 0:
        raise StageError("structure from motion found no 3D points to start the Gaussians from; "
                         "try a capture with more texture and overlap, or more --num-frames")
    k = min(4, n)
    dists, _ = NearestNeighbors(n_neighbors=k).fit(xyz).kneighbors(xyz)
    mean_dist = dists[:, 1:].mean(axis=1) if k > 1 else np.full(n, 0.01)
    mean_dist = np.clip(mean_dist, 1e-4, None)
    num_rest = (sh_degree + 1) ** 2 - 1
    quats = np.zeros((n, 4), np.float32)
    quats[:, 0] = 1.0
    params = {
        "means": xyz,
        "scales": np.log(np.repeat(mean_dist[:, None], 3, axis=1)).astype(np.float32),
        "quats": quats,
        "opacities": np.full(n, np.log(init_opacity / (1 - init_opacity)), np.float32),
        "sh0": rgb_to_sh0(np.asarray(rgb, np.float32) / 255.0)[:, None, :],
        "shN": np.zeros((n, num_rest, 3), np.float32),
    }
    return torch.nn.ParameterDict(
        {k: torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(v)).to(device)) for k, v in params.items()})


def splats_from_params(params) -> Splats:
    def np_(key):
        return params[key].detach().float().cpu().numpy()

    return Splats(means=np_("means"), sh0=np_("sh0").reshape(-1, 3), shN=np_("shN"),
                  opacities=np_("opacities").reshape(-1), scales=np_("scales"), quats=np_("quats"))


def params_from_splats(splats: Splats, device="cpu") -> dict[str, torch.Tensor]:
    return {
        "means": torch.from_numpy(splats.means).to(device),
        "scales": torch.from_numpy(splats.scales).to(device),
        "quats": torch.from_numpy(splats.quats).to(device),
        "opacities": torch.from_numpy(splats.opacities).to(device),
        "sh0": torch.from_numpy(splats.sh0).reshape(-1, 1, 3).to(device),
        "shN": torch.from_numpy(splats.shN).to(device),
    }


def activated(params) -> dict[str, torch.Tensor]:
    """Render-ready tensors: exp'ed scales, sigmoid'ed opacities, SH stacked [N, K+1, 3]."""
    return {
        "means": params["means"],
        "quats": params["quats"],
        "scales": torch.exp(params["scales"]),
        "opacities": torch.sigmoid(params["opacities"]),
        "colors": torch.cat([params["sh0"], params["shN"]], dim=1),
    }
