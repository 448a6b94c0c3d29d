"""Registered views as tensors: undistorted frame, soft head mask, camera, and the head's box.

Shared by training, isolation and the benchmark. The rasterizer is a pinhole, so frames and
masks are undistorted with the SfM camera's radial term once, on load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .core.cameras import CameraFrame
from .errors import StageError


@dataclass
class View:
    camera: CameraFrame
    image: torch.Tensor    # [H, W, 3] float in 0..1, undistorted
    mask: torch.Tensor     # [H, W, 1] float in 0..1, undistorted
    viewmat: torch.Tensor  # [4, 4] world->camera, OpenCV
    K: torch.Tensor        # [3, 3]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1: the head mask's box plus margin

    @property
    def width(self) -> int:
        return self.camera.width

    @property
    def height(self) -> int:
        return self.camera.height

    def crop(self, downscale: int = 1):
        """(image, mask, K, width, height) of the head box: what the loss needs, nothing more.

        `downscale` > 1 averages blocks of pixels (coarse early training steps cost less)."""
        x0, y0, x1, y1 = self.box
        image, mask = self.image[y0:y1, x0:x1], self.mask[y0:y1, x0:x1]
        K = self.K.clone()
        K[0, 2] -= x0
        K[1, 2] -= y0
        if downscale > 1:
            h, w = (y1 - y0) // downscale, (x1 - x0) // downscale
            both = torch.cat([image, mask], dim=2)[: h * downscale, : w * downscale]
            both = both.reshape(h, downscale, w, downscale, 4).mean(dim=(1, 3))
            image, mask = both[..., :3], both[..., 3:]
            K[:2] /= downscale  # continuous pixel coordinates (centres at +0.5) scale exactly
            return image, mask, K, w, h
        return image, mask, K, x1 - x0, y1 - y0


def undistort(img: np.ndarray, cam: CameraFrame, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    params = cam.distortion.get("params") or []
    if not params or all(abs(p) < 1e-12 for p in params):
        return img
    dist = np.zeros(5)
    dist[0] = params[0]
    if cam.distortion.get("model") == "RADIAL" and len(params) > 1:
        dist[1] = params[1]
    map1, map2 = cv2.initUndistortRectifyMap(cam.K, dist, None, cam.K, (cam.width, cam.height), cv2.CV_32FC1)
    return cv2.remap(img, map1, map2, interpolation, borderMode=cv2.BORDER_REPLICATE)


def head_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """Bounding box of mask > 0.05, grown by `margin` of its size on each side, clamped."""
    h, w = mask.shape[:2]
    ys, xs = np.nonzero(mask > 0.05)
    if len(xs) == 0:
        return 0, 0, w, h
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return (int(max(0, x0 - mx)), int(max(0, y0 - my)), int(min(w, x1 + mx)), int(min(h, y1 + my)))


def load_view(root, cam: CameraFrame, device, margin: float = 0.1) -> View:
    bgr = cv2.imread(str(root / cam.image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise StageError(f"frame {root / cam.image} is missing or unreadable; the workspace is damaged: "
                         "run 'facesplat check' on it, or delete it and run again")
    if cam.mask:
        mask = cv2.imread(str(root / cam.mask), cv2.IMREAD_GRAYSCALE)
        if mask is None or mask.shape != bgr.shape[:2]:
            raise StageError(f"mask {root / cam.mask} is missing, unreadable or of another size than its frame; "
                             "the workspace is damaged: delete it and run again")
    else:
        mask = np.full(bgr.shape[:2], 255, np.uint8)
    rgb = undistort(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), cam)
    mask = undistort(mask, cam)
    mask_f = mask.astype(np.float32) / 255.0
    return View(
        camera=cam,
        image=torch.from_numpy(rgb.astype(np.float32) / 255.0).to(device),
        mask=torch.from_numpy(mask_f[..., None]).to(device),
        viewmat=torch.from_numpy(cam.world_to_camera.astype(np.float32)).to(device),
        K=torch.from_numpy(cam.K.astype(np.float32)).to(device),
        box=head_box(mask_f, margin),
    )


def with_cameras(views: list[View], cameras: list[CameraFrame]) -> list[View]:
    """The same frames and masks seen from other poses of the same cameras (refined ones): the
    pixels, intrinsics and head boxes are shared, the poses are `cameras`' (matched by frame)."""
    by_frame = {v.camera.frame_index: v for v in views}
    missing = [c.frame_index for c in cameras if c.frame_index not in by_frame]
    if missing:
        raise StageError(f"the trained cameras name frame {missing[0]}, which cameras.json lacks; the workspace "
                         "is damaged: delete its cameras_refined.json and run the same command again")
    return [dataclasses.replace(by_frame[c.frame_index], camera=c,
                                viewmat=torch.from_numpy(c.world_to_camera.astype(np.float32))
                                .to(by_frame[c.frame_index].viewmat.device))
            for c in cameras]


def load_views(root, cameras: list[CameraFrame], device, margin: float = 0.1) -> list[View]:
    return [load_view(root, cam, device, margin) for cam in cameras]
