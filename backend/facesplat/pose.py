"""Camera pose refinement: a small learned SE(3) correction of each training view's camera.

Structure from motion leaves some cameras a few millimetres off (on a 360-degree orbit, those
behind the head); Gaussians trained on views that disagree blur. As gsplat's simple_trainer
(`pose_opt`) and nerfstudio's camera optimizer do, each view gets 6 numbers, zero at the start:
an axis-angle rotation w (radians) and a translation u (in units of the scene scale), applied in
the camera's frame before rasterizing:

    world_to_camera' = [exp(w) | scene_scale * u] @ world_to_camera

The gradient reaches them through the rasterizer's viewmat (plain autograd in render/projection.py
on the CPU backends; gsplat's `rasterization` differentiates its viewmats too). Each view has its
own Adam, stepped only on the steps that render that view, so that a step of size `pose_lr` moves
a camera by at most about `pose_lr` radians (and `pose_lr` scene scales) per visit, whatever the
number of views. The first view stays fixed: the world frame is tied to it, and cannot drift with
the Gaussians.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .core.cameras import CameraFrame

SMALL_ANGLE2 = 1e-8  # below this squared angle exp() uses its Taylor series (no 0/0)


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """[3] axis-angle -> [3, 3] rotation (Rodrigues), with finite gradients at w = 0."""
    theta2 = (w * w).sum()
    small = theta2 < SMALL_ANGLE2
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)  # no sqrt(0) in the graph
    theta = safe2.sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / safe2)
    zero = torch.zeros_like(w[0])
    k = torch.stack([zero, -w[2], w[1], w[2], zero, -w[0], -w[1], w[0], zero]).reshape(3, 3)
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * k + b * (k @ k)


def correction_matrix(delta: torch.Tensor, scene_scale: float) -> torch.Tensor:
    """[6] (w, u) -> [4, 4] rigid correction applied on the left of world_to_camera."""
    top = torch.cat([so3_exp(delta[:3]), (scene_scale * delta[3:])[:, None]], dim=1)
    bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=delta.dtype, device=delta.device)
    return torch.cat([top, bottom], dim=0)


class PoseRefiner:
    """Per-view pose corrections and their optimizers. `viewmat(index, viewmat)` is what a
    training step renders with; `step(index)` after backward updates that view's correction."""

    def __init__(self, num_views: int, lr: float, scene_scale: float, device, fixed: tuple[int, ...] = (0,)):
        self.scene_scale = float(scene_scale)
        self.fixed = set(fixed)
        self.deltas = [torch.zeros(6, device=device, requires_grad=i not in self.fixed) for i in range(num_views)]
        self.optimizers = {i: torch.optim.Adam([d], lr=lr) for i, d in enumerate(self.deltas) if i not in self.fixed}

    def viewmat(self, index: int, viewmat: torch.Tensor) -> torch.Tensor:
        if index in self.fixed:
            return viewmat
        return correction_matrix(self.deltas[index], self.scene_scale).to(viewmat.dtype) @ viewmat

    def step(self, index: int) -> None:
        opt = self.optimizers.get(index)
        if opt is not None and self.deltas[index].grad is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    def zero_grad(self) -> None:
        for d in self.deltas:
            d.grad = None

    def corrections(self) -> list[np.ndarray]:
        """[4, 4] float64 correction of every view (identity for the fixed ones)."""
        out = []
        for d in self.deltas:
            d = d.detach().cpu().double()  # MPS has no float64
            out.append(correction_matrix(d, self.scene_scale).numpy())
        return out

    def refined_cameras(self, cameras: list[CameraFrame]) -> list[CameraFrame]:
        return [dataclasses.replace(cam, world_to_camera=c @ cam.world_to_camera)
                for cam, c in zip(cameras, self.corrections())]

    UNMOVED = {"pose_rotation_deg_mean": 0.0, "pose_rotation_deg_max": 0.0, "pose_shift_mean": 0.0,
               "pose_shift_max": 0.0}  # the summary when refinement is off

    def summary(self) -> dict:
        """How far the cameras moved: mean and max rotation (degrees) and centre shift (world units)."""
        angles, shifts = [], []
        for c in self.corrections():
            angles.append(np.degrees(np.arccos(np.clip((np.trace(c[:3, :3]) - 1) / 2, -1, 1))))
            shifts.append(float(np.linalg.norm(c[:3, :3].T @ c[:3, 3])))  # the centre moves by -R^T t
        return {"pose_rotation_deg_mean": round(float(np.mean(angles)), 4),
                "pose_rotation_deg_max": round(float(np.max(angles)), 4),
                "pose_shift_mean": round(float(np.mean(shifts)), 5),
                "pose_shift_max": round(float(np.max(shifts)), 5)}
