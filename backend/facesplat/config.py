"""Run configuration: one small dataclass per stage, with the seed's defaults.

Each stage's config is hashed into its `<stage>.done.json` marker, so changing a parameter
re-runs that stage and every stage after it, and nothing before it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field


@dataclass
class FramesConfig:
    num_frames: int = 40
    """How many frames to sample evenly over the video (or at most how many images to take)."""
    height: int = 540
    """Target frame height in pixels; width follows the aspect ratio, both forced even."""
    sharpness_window: float = 0.5
    """Fraction of each sampling window searched for the sharpest frame (variance of Laplacian)."""


@dataclass
class MaskConfig:
    expansion: float = 1.6
    """Ellipse size relative to the detected face box (covers hair, ears and neck)."""
    blur_fraction: float = 0.15
    """Gaussian blur sigma as a fraction of the ellipse's minor axis (soft edge)."""
    min_face_fraction: float = 0.12
    """Smallest face to detect, as a fraction of the frame height."""
    min_frames_with_face: float = 0.15
    """Stop when the face is found in fewer than this fraction of the frames: masks placed by
    interpolating across most of a capture miss the head, and training on them would be wasted."""
    refine: bool = True
    """Cut each ellipse down to the head's silhouette by colour (GrabCut), so that background
    inside the ellipse is not trained as head (it became semi-transparent fog around the scalp)."""
    refine_margin: float = 0.02
    """Grow the silhouette by this fraction of the ellipse's minor axis (benefit of the doubt)."""


@dataclass
class SfmConfig:
    exhaustive_max_frames: int = 60
    """Exhaustive matching up to this many frames, sequential matching above."""
    sequential_overlap: int = 10
    """Neighbours matched per frame in sequential mode."""
    max_num_features: int = 8192
    """SIFT features per frame."""
    peak_threshold: float = 0.004
    """SIFT contrast threshold (COLMAP: 0.0067). Lower finds more features on small frames:
    on the sample capture at 270 px it took registration from 34/40 to 40/40 frames."""
    min_pose_inliers: int = 15
    """Inlier matches needed to register a frame (COLMAP: 30); small frames have fewer features."""
    min_registered_fraction: float = 0.5
    """Fail the stage if fewer than this fraction of frames register."""


@dataclass
class TrainConfig:
    num_iters: int = 3000
    """Optimisation steps. The densification schedule scales with it."""
    sh_degree: int = 1
    ssim_weight: float = 0.2
    """Loss = (1 - w) * masked L1 + w * masked (1 - SSIM)."""
    bg_alpha_weight: float = 0.1
    """Weight of the penalty on rendered alpha outside the head mask."""
    crop_margin: float = 0.1
    """Rendered region: the head mask's box grown by this fraction on each side."""
    coarse_fraction: float = 0.5
    """The first this fraction of the steps render at half resolution (4x fewer pixels)."""
    seed: int = 0
    max_gaussians: int = 100_000
    """Stop growing past this many Gaussians (memory and CPU time guard)."""
    grow_grad2d: float = 0.0008
    """Densify Gaussians whose mean screen-space gradient exceeds this. gsplat's 0.0002 assumes a
    loss averaged over the whole frame; ours is averaged over head pixels of a head-sized crop,
    which makes gradients about 4x larger (at 0.0002 the sample grew 40x in 150 steps)."""


@dataclass
class IsolateConfig:
    threshold: float = 0.3
    """Keep a Gaussian whose visible appearances fall inside the head mask in more than this fraction of views."""
    min_opacity: float = 0.05
    """...and whose opacity exceeds this."""
    hull_fraction: float = 0.7
    """...and whose centre projects onto the head mask in more than this fraction of all views
    (the masks' visual hull; below 1 to forgive a few misplaced interpolated masks)."""


@dataclass
class Config:
    frames: FramesConfig = field(default_factory=FramesConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    sfm: SfmConfig = field(default_factory=SfmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    isolate: IsolateConfig = field(default_factory=IsolateConfig)
    device: str = "auto"
    """auto | cuda | cpu | mps"""


def config_hash(*parts) -> str:
    """Stable short hash of dataclasses / plain values, for stage markers."""
    def plain(x):
        return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
