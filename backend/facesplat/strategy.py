"""Densification: the 3DGS rules as gsplat's DefaultStrategy applies them, in plain PyTorch.

Runs with any of our renderers and needs no gsplat (the CPU install has none). The rules, the
order of operations and the random draws are those of gsplat 1.5.3's `DefaultStrategy` and
`strategy/ops.py` (Copyright the gsplat authors, Apache License 2.0; ported and trimmed here to
the unpacked, single-optimizer-per-parameter, mean-gradient case we use), with these changes:
- the opacity reset actually happens (gsplat 1.5.3 writes `step % every == 0 & step > 0`, which
  Python reads as a chained comparison that is always False);
- growth never takes the count above `max_gaussians` (the candidates with the highest gradients
  win), so a CPU run cannot grow without bound;
- Gaussians are pruned for low opacity only: our earlier wrapper around gsplat hid its reset
  step from gsplat, which also turned off gsplat's "too big in 3D" pruning; `prune_scale3d`
  brings it back, off by default so the measured figures stay as they were.
`scaled_strategy` scales the 30k-step schedule to the run's step count in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

REFERENCE_STEPS = 30_000  # the 3DGS schedule below is tuned for this many steps
REQUIRED_PARAMS = ("means", "scales", "quats", "opacities")


@dataclass
class HeadStrategy:
    prune_opa: float = 0.005  # prune below this opacity; the reset sets opacities to 2x this
    grow_grad2d: float = 0.0002  # grow where the mean screen-space gradient exceeds this
    grow_scale3d: float = 0.01  # at or below this size (x scene_scale) duplicate, above it split
    prune_scale3d: float | None = None  # if set, also prune larger than this (x scene_scale) after the first reset
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    reset_every: int = 3000
    refine_every: int = 100
    max_gaussians: int = 300_000

    def check_sanity(self, params, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """One Adam-like optimizer with one parameter per trainable key; the keys we edit exist."""
        trainable = {name for name, p in params.items() if p.requires_grad}
        if trainable != set(optimizers):
            raise ValueError(f"parameters {sorted(trainable)} and optimizers {sorted(optimizers)} differ")
        for name, opt in optimizers.items():
            if len(opt.param_groups) != 1 or len(opt.param_groups[0]["params"]) != 1:
                raise ValueError(f"optimizer {name!r} must hold exactly one parameter")
        missing = [k for k in REQUIRED_PARAMS if k not in params]
        if missing:
            raise ValueError(f"parameters {missing} are required for densification")

    def initialize_state(self, scene_scale: float = 1.0) -> dict:
        # grad2d: summed norm of the screen-space gradient per Gaussian; count: views it was seen in.
        # Made on the first step, on the parameters' device.
        return {"grad2d": None, "count": None, "scene_scale": scene_scale}

    def step_pre_backward(self, params, optimizers, state, step: int, info: dict) -> None:
        info["means2d"].retain_grad()  # the densification signal is means2d's gradient

    def step_post_backward(self, params, optimizers, state, step: int, info: dict) -> None:
        if step >= self.refine_stop_iter:
            return
        self._update_state(params, state, info)
        if step > self.refine_start_iter and step % self.refine_every == 0:
            self._grow(params, optimizers, state)
            self._prune(params, optimizers, state, step)
            state["grad2d"].zero_()
            state["count"].zero_()
            if params["means"].is_cuda:
                torch.cuda.empty_cache()
        if step > 0 and step % self.reset_every == 0:
            reset_opacities(params, optimizers, value=self.prune_opa * 2.0)

    def _update_state(self, params, state: dict, info: dict) -> None:
        grads = info["means2d"].grad.clone()  # [C, N, 2]
        grads[..., 0] *= info["width"] / 2.0 * info["n_cameras"]  # to [-1, 1] screen units
        grads[..., 1] *= info["height"] / 2.0 * info["n_cameras"]
        n = len(params["means"])
        if state["grad2d"] is None:
            state["grad2d"] = torch.zeros(n, device=grads.device)
        if state["count"] is None:
            state["count"] = torch.zeros(n, device=grads.device)
        seen = (info["radii"] > 0.0).all(dim=-1)  # [C, N]
        ids = torch.where(seen)[1]
        state["grad2d"].index_add_(0, ids, grads[seen].norm(dim=-1))
        state["count"].index_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))

    @torch.no_grad()
    def _grow(self, params, optimizers, state: dict) -> tuple[int, int]:
        """Duplicate small Gaussians and split large ones where the mean gradient is high."""
        grads = state["grad2d"] / state["count"].clamp_min(1)
        is_high = grads > self.grow_grad2d
        budget = self.max_gaussians - len(params["means"])  # each duplicate or split adds one
        if budget <= 0:
            return 0, 0
        if int(is_high.sum()) > budget:
            # Keep the `budget` highest gradients; a stable sort keeps ties in index order.
            order = torch.sort(torch.where(is_high, grads, -1.0), descending=True, stable=True).indices
            is_high = torch.zeros_like(is_high)
            is_high[order[:budget]] = True
        is_small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        is_dupli, is_split = is_high & is_small, is_high & ~is_small
        n_dupli, n_split = int(is_dupli.sum()), int(is_split.sum())
        if n_dupli > 0:
            duplicate(params, optimizers, state, is_dupli)
        # the copies just appended are not split
        is_split = torch.cat([is_split, torch.zeros(n_dupli, dtype=torch.bool, device=is_split.device)])
        if n_split > 0:
            split(params, optimizers, state, is_split)
        return n_dupli, n_split

    @torch.no_grad()
    def _prune(self, params, optimizers, state: dict, step: int) -> int:
        is_prune = torch.sigmoid(params["opacities"].flatten()) < self.prune_opa
        if self.prune_scale3d is not None and step > self.reset_every:
            too_big = torch.exp(params["scales"]).max(dim=-1).values > self.prune_scale3d * state["scene_scale"]
            is_prune |= too_big
        n_prune = int(is_prune.sum())
        if n_prune > 0:
            remove(params, optimizers, state, is_prune)
        return n_prune


def scaled_strategy(num_iters: int, max_gaussians: int, grow_grad2d: float) -> HeadStrategy:
    """The 3DGS schedule (refine 500..15000 every 100, reset every 3000) scaled to `num_iters`,
    with floors so very short runs still refine on averaged gradients and reset at most rarely."""
    s = num_iters / REFERENCE_STEPS
    return HeadStrategy(
        refine_start_iter=max(int(500 * s), 20),
        refine_stop_iter=int(15_000 * s),
        refine_every=max(int(100 * s), 10),
        reset_every=max(int(3000 * s), 200),
        max_gaussians=max_gaussians,
        grow_grad2d=grow_grad2d,
    )


# ---- edits of the parameter set that keep each optimizer's per-row state in step -------------


@torch.no_grad()
def _replace_params(params, optimizers, param_fn: Callable[[str, Tensor], Tensor],
                    state_fn: Callable[[Tensor], Tensor], names=None) -> None:
    """Replace each parameter by param_fn(name, p) and each per-row optimizer state tensor
    (Adam's exp_avg, exp_avg_sq; not its step count) by state_fn(v)."""
    for name in list(params.keys()) if names is None else names:
        old = params[name]
        new = torch.nn.Parameter(param_fn(name, old), requires_grad=old.requires_grad)
        params[name] = new
        if name not in optimizers:
            if old.requires_grad:
                raise ValueError(f"trainable parameter {name!r} has no optimizer")
            continue
        opt = optimizers[name]
        kept = opt.state.pop(old, {})
        for key, value in kept.items():
            if key != "step":
                kept[key] = state_fn(value)
        opt.param_groups[0]["params"] = [new]
        if kept:
            opt.state[new] = kept


def _zeros_like_rows(v: Tensor, n: int) -> Tensor:
    return torch.zeros((n, *v.shape[1:]), dtype=v.dtype, device=v.device)


@torch.no_grad()
def duplicate(params, optimizers, state: dict, mask: Tensor) -> None:
    """Append a copy of each masked Gaussian; the copies start with zero optimizer moments."""
    sel = torch.where(mask)[0]
    _replace_params(params, optimizers, lambda _, p: torch.cat([p, p[sel]]),
                    lambda v: torch.cat([v, _zeros_like_rows(v, len(sel))]))
    for key, value in state.items():
        if isinstance(value, Tensor):
            state[key] = torch.cat((value, value[sel]))


@torch.no_grad()
def split(params, optimizers, state: dict, mask: Tensor) -> None:
    """Replace each masked Gaussian by two drawn inside it, 1.6x smaller (3DGS), appended last."""
    sel, rest = torch.where(mask)[0], torch.where(~mask)[0]
    scales = torch.exp(params["scales"][sel])
    rotmats = quat_to_rotmat(F.normalize(params["quats"][sel], dim=-1))  # [S, 3, 3]
    # the same draw as gsplat's: two standard-normal offsets per Gaussian, in its own frame
    samples = torch.einsum("nij,nj,bnj->bni", rotmats, scales, torch.randn(2, len(scales), 3, device=scales.device))

    def param_fn(name: str, p: Tensor) -> Tensor:
        if name == "means":
            halves = (p[sel] + samples).reshape(-1, 3)  # [2S, 3]
        elif name == "scales":
            halves = torch.log(scales / 1.6).repeat(2, 1)
        else:
            halves = p[sel].repeat(2, *[1] * (p.dim() - 1))
        return torch.cat([p[rest], halves])

    _replace_params(params, optimizers, param_fn, lambda v: torch.cat([v[rest], _zeros_like_rows(v, 2 * len(sel))]))
    for key, value in state.items():
        if isinstance(value, Tensor):
            state[key] = torch.cat((value[rest], value[sel].repeat(2, *[1] * (value.dim() - 1))))


@torch.no_grad()
def remove(params, optimizers, state: dict, mask: Tensor) -> None:
    keep = torch.where(~mask)[0]
    _replace_params(params, optimizers, lambda _, p: p[keep], lambda v: v[keep])
    for key, value in state.items():
        if isinstance(value, Tensor):
            state[key] = value[keep]


@torch.no_grad()
def reset_opacities(params, optimizers, value: float) -> None:
    """Clamp every opacity to at most `value` (post-sigmoid) and forget its optimizer moments."""
    ceiling = torch.logit(torch.tensor(value)).item()  # in float32, as gsplat computes it
    _replace_params(params, optimizers, lambda _, p: torch.clamp(p, max=ceiling), torch.zeros_like,
                    names=["opacities"])


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 4] unit quaternions (w, x, y, z) -> [..., 3, 3] rotation matrices."""
    w, x, y, z = torch.unbind(quats, dim=-1)
    mat = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1)  # fmt: skip
    return mat.reshape(quats.shape[:-1] + (3, 3))
