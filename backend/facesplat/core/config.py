"""Run configuration: one small dataclass per stage, with the seed's defaults. Pure Python.

This is the one source of every knob: the CLI's flags, bounds and choices are generated from the
fields' metadata (`option_schema`), and the Blender add-on (which vendors core/) builds its
properties and command line from the same schema. Each stage's config is hashed into its
`<stage>.done.json` marker, so changing any knob re-runs that stage and every stage after it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field


def knob(default, help: str, *, flag: str | None = None, lo=None, hi=None, choices=None,
         invert: bool = False, commands=("run",)):
    """A config field. `flag` makes it a command-line option (of `commands`); `lo`/`hi` are
    inclusive bounds checked by `validate`; `invert` turns a bool into a flag that sets False."""
    return field(default=default, metadata={"help": help, "flag": flag, "min": lo, "max": hi,
                                            "choices": choices, "invert": invert, "commands": commands})


@dataclass
class FramesConfig:
    num_frames: int = knob(40, "frames to sample evenly over the video (at most this many photos)",
                           flag="--num-frames", lo=3, hi=2000)
    height: int = knob(540, "frame height in pixels the pipeline works at (width follows)",
                       flag="--height", lo=180, hi=4320)
    sharpness_window: float = knob(0.5, "fraction of each sampling window searched for the sharpest frame")
    sfm_height: int = knob(
        540, "structure from motion works on frames at least this high (capped at the source; a larger --height "
             "is used as it is): on a rendered 360-degree orbit at --height 270, SfM's cameras drifted 11 mm on "
             "average (31 mm at the loop's seam), with frames at 360 px 3 mm")


@dataclass
class FacesConfig:
    min_face_fraction: float = knob(0.12, "smallest face to detect, as a fraction of the frame height")
    expansion: float = knob(1.6, "head ellipse size relative to the detected face box (hair, ears, neck)")


@dataclass
class HeadVolumeConfig:
    min_axis_spread: float = 0.01
    """Smallest eigenvalue of the optical axes' normal matrix per camera (the mean squared sine
    of the axes' angle to its weakest direction): below it the axes are nearly parallel (a
    walk-by, a pan) and fix no point. 0.01 is about +-6 degrees of spread."""
    max_axis_miss: float = 0.4
    """The cameras' axes must pass their convergence point this close: RMS sine of the angle
    between a camera's axis and its direction to the point (0.4: 24 degrees). Farther, they do
    not look at one subject."""
    min_level_spread: float = 0.03
    """The cameras' x axes must turn this much (second eigenvalue of their scatter: the mean
    squared sine of their angle to their mean, 0.03 is about +-10 degrees) to fix up as the
    direction orthogonal to them all."""
    face_inlier_tolerance: float = 0.5
    """A face view agrees with a triangulated head centre when the centre reprojects within
    this many of its head ellipse's vertical semi-axes of the ellipse's centre."""
    default_radius: float = 0.25
    """Head radius, in units of the median camera distance, when neither faces nor points size
    the head (a phone at arm's length: 0.5 m away, a head about 0.12 m in radius)."""
    search_radius: float = 2.0
    """Sparse points within this many prior head radii of the centre may belong to the head."""
    cluster_eps: float = 0.5
    """DBSCAN neighbourhood, in prior head radii: the head's points chain together, the
    background's sit apart."""
    cluster_min_points: int = 5
    """DBSCAN core-point count."""
    min_head_points: int = 30
    """Fewer points than this in the head's cluster: too few to size it; use faces or the default."""
    extent_quantile: float = 0.02
    """The head's box spans these quantiles of its points along each axis (both ends), so stray
    points do not blow it up."""
    margin: float = 1.3
    """The ellipsoid's semi-axes are the points' half-extents times this (an ellipsoid through the
    box's face centres misses its corners, smooth skin and stone carry few points; GrabCut
    trims what is background: on the rendered orbit 1.3 kept precision 0.95, 1.5 fell to 0.86)."""



@dataclass
class MaskConfig:
    head: HeadVolumeConfig = field(default_factory=HeadVolumeConfig)
    blur_fraction: float = knob(0.15, "soft edge: blur sigma as a fraction of the ellipse's minor axis")
    refine: bool = knob(
        True, "keep the plain projected head ellipses instead of cutting them to the head's silhouette by "
              "colour (try it when head.ply misses hair or ears that match the background's colour)",
        flag="--ellipse-masks", invert=True)
    refine_margin: float = knob(0.02, "grow the silhouette by this fraction of the ellipse's minor axis")
    hull: bool = knob(True, "make the cuts consistent across views: each mask is the view of the visual hull "
                            "voted from all views' cuts (needs refine)")
    hull_vote: float = knob(
        0.92, "a voxel of the hull is head when it lies inside the cut in at least this fraction of the views that "
             "see it (1.0 is the classic hull, where one view's wrong cut carves the head in every view: on the "
             "rendered 360-degree orbit its views kept 0.945 of the head, worst view 0.888; at 0.9, 0.997 / 0.989)")
    hull_slack: float = knob(
        0.0, "each view votes with its cut grown by this fraction of the ellipse's minor axis, forgiving pose "
             "errors that shrink an exact intersection (0.1 on the 360-degree orbit: mask recall 0.89 -> 0.97; "
             "but on the sample capture 32.5 dB / fog 0.017 against 33.7-34.1 dB / 0.007 without)")
    neck_top: float = knob(
        -0.2, "for a head placed by faces (a person): below this height, in the head ellipsoid's vertical semi-axes "
              "from its centre, the head runs on into the neck, skin like the shoulders, where each view's cut ends "
              "the neck at its own height; there a view whose cut ends above a voxel has no say on it in the hull's "
              "vote, nor trims the mask below its cut's end. On the rendered 360-degree orbit the back views' cuts "
              "ended at the top of the neck in 2 of 4 runs and the vote carved it away: held-out PSNR 31.4-32.2 dB, "
              "with this 33.6-35.1 dB (four runs, fog 0.017-0.021)")
    neck_cut: float = knob(
        -0.55, "for a head placed by faces: nothing below this height (ellipsoid vertical semi-axes from its centre) "
               "is head, so head.ply ends at the neck, not on the shoulders. On the rendered captures the crown is "
               "at +0.62 to +0.67 and the benchmark's cut at the neck at -0.47 to -0.50")
    hull_resolution: int = knob(64, "voxels across the hull's grid (over the grown head ellipsoid)")
    hull_min_views: int = knob(3, "carve a hull only from at least this many cut views; fewer keep their own cuts")
    hull_beyond_cut: float = knob(
        0.5, "mask weight where a view's hull says head but its own cut says background: 1 ignores the cut, 0 trims "
             "the hull by the cut (sharper, but every cut's own misses come back). At 0.5 training weighs those "
             "pixels half; isolation's hull test counts them out (> 0.5), its visibility vote in "
             "(IsolateConfig.inside_mask_level). Held-out PSNR / fog at the preview "
             "settings, 360-degree orbit and sample capture: 0 gave 28.1 dB (vote 0.9) and 34.1 / 0.007; "
             "1 gave 31.7 / 0.034 and 34.8 / 0.042; 0.5 gave 30.7 / 0.024 and 34.0 / 0.021")


@dataclass
class SfmConfig:
    exhaustive_max_frames: int = knob(60, "exhaustive matching up to this many frames, sequential above")
    sequential_overlap: int = knob(10, "neighbours matched per frame in sequential mode")
    max_num_features: int = knob(8192, "SIFT features per frame")
    peak_threshold: float = knob(
        0.004, "SIFT contrast threshold (COLMAP: 0.0067); lower finds more features on small frames "
               "(on the sample capture at 270 px: 34/40 -> 40/40 registered)")
    min_pose_inliers: int = knob(15, "inlier matches needed to register a frame (COLMAP: 30)")
    min_pose_inlier_ratio: float = knob(0.15, "inlier ratio needed to register a frame (COLMAP: 0.25)")
    min_registered_fraction: float = knob(0.5, "fail the stage if fewer than this fraction of frames register")
    random_seed: int = knob(0, "COLMAP's random seed (its threaded matching stays non-deterministic)")


@dataclass
class TrainConfig:
    num_iters: int = knob(3000, "optimisation steps; the densification schedule scales with it",
                          flag="--num-iters", lo=1, hi=100_000)
    seed: int = knob(0, "random seed of the training (views' order, backgrounds)", flag="--seed", lo=0, hi=2**31 - 1)
    sh_degree: int = knob(1, "spherical-harmonics degree of the colours")
    sh_start_fraction: float = knob(0.25, "degree 1 colours start after this fraction of the steps")
    ssim_weight: float = knob(0.2, "loss = (1 - w) masked L1 + w masked (1 - SSIM)")
    bg_alpha_weight: float = knob(
        0.3, "weight of the penalty on rendered alpha outside the head mask. On the sample capture's defaults "
             "workspace (same SfM, every 2nd pixel in the fine steps) 0.1 -> 0.3 took held-out PSNR 36.21 -> "
             "37.39 dB and fog 0.013 -> 0.002; at the preview settings (270 px) it cost PSNR (sample capture "
             "34.07 -> 33.53 dB, 360-degree orbit ~34.4 -> 32.7 dB) for fog 0.02-0.03 -> 0.003: the preview "
             "preset keeps 0.1")
    crop_margin: float = knob(0.1, "rendered region: the head mask's box grown by this fraction per side")
    coarse_fraction: float = knob(0.5, "the first this fraction of the steps render at half resolution")
    init_opacity: float = knob(0.1, "opacity of the Gaussians made from the sparse points")
    max_gaussians: int = knob(100_000, "stop growing past this many Gaussians (memory and CPU time guard)")
    grow_grad2d: float = knob(
        0.0008, "densify Gaussians whose mean screen-space gradient exceeds this (gsplat's 0.0002 assumes a "
                "whole-frame loss; ours is averaged over head pixels, ~4x larger gradients)")
    bg_tile_share: float = knob(
        0.25, "CPU: render the tiles holding head pixels plus this random share of the box's other tiles each "
              "step (their alpha penalty weighs 1/share: the same on average, for less work); 1 renders all")
    fine_pixel_stride: int = knob(
        2, "without gsplat (CPU, Apple MPS): after the coarse steps, render every this-many-th pixel of the "
           "full-resolution crop each way, from a random phase each step: exactly the full-resolution image at "
           "those pixels, for about 1/stride^2 of the kernels' work; 1 renders every pixel (the preview preset: its "
           "fine steps are 270 px). "
           "On the sample capture's defaults workspace, 1 -> 2: training 656 -> 347 s, held-out PSNR 37.21 -> "
           "36.21 dB with the alpha penalty's old weight 0.1 (37.39 dB with 0.3); at the preview settings "
           "77 -> 51 s, 34.07 -> 32.87 dB (docs/benchmarks.md)")
    threads: int = knob(0, "CPU threads of the training's kernels and OpenCV (0: all cores); PyTorch gets one on "
                           "the CPU (its small ops would only fight the kernels' threads for the cores)")
    lr_means: float = knob(1.6e-4, "Adam step of the means, times the scene scale (gsplat simple_trainer)")
    lr_means_final_fraction: float = knob(0.01, "the means' step falls to this fraction over the run")
    lr_scales: float = knob(5e-3, "Adam step of the log scales")
    lr_quats: float = knob(1e-3, "Adam step of the rotations")
    lr_opacities: float = knob(5e-2, "Adam step of the logit opacities")
    lr_sh0: float = knob(2.5e-3, "Adam step of the base colours")
    lr_shN: float = knob(2.5e-3 / 20, "Adam step of the higher SH coefficients")
    pose_lr: float = knob(
        5e-4, "Adam step of each view's camera correction (radians, and scene scales for the shift; pose.py), "
              "taken on the steps that render that view; 0 keeps SfM's cameras. The trained cameras go to "
              "cameras_refined.json. Held-out PSNR / fog at the preview settings with 0 and 5e-4 (two seeds each): "
              "sample capture 33.9 / 0.021 -> 34.6 / 0.024 and 34.0 / 0.023 -> 34.2 / 0.023; 360-degree orbit "
              "34.7 / 0.032 -> 34.7 / 0.027 and 34.1 / 0.031 -> 34.8 / 0.026; the orbit with every camera knocked "
              "0.15 degrees and 2 mm 32.5 / 0.035 -> 34.0 / 0.029. 1e-3 moved the cameras twice as far for no "
              "gain. On the orbit it moved SfM's worst cameras (6-9 mm off) 20-45 % towards the truth; no "
              "measurable cost per step (docs/benchmarks.md)")
    pose_start_fraction: float = knob(
        0.25, "cameras are refined after this fraction of the steps (before it the Gaussians are blobs that "
              "would pull the cameras anywhere)")


@dataclass
class IsolateConfig:
    threshold: float = knob(
        0.3, "keep Gaussians inside the head mask in more than this fraction of the views that see them",
        flag="--threshold", lo=0.0, hi=0.99, commands=("run", "isolate"))
    min_opacity: float = knob(0.05, "keep only Gaussians more opaque than this", flag="--min-opacity",
                              lo=0.0, hi=0.9999, commands=("run", "isolate"))
    hull_fraction: float = knob(
        0.7, "...and whose centre projects onto the head mask in more than this fraction of all views "
             "(the masks' visual hull; below 1 to forgive a few misplaced masks)")
    visible_weight: float = knob(0.1, "a Gaussian is visible in a view when its blending weight sums to "
                                      "more than this many pixels")
    inside_mask_level: float = knob(
        0.25, "the visibility vote counts a pixel as head where its mask exceeds this: 0.25 counts the hull's rim "
              "that the view's own cut calls background (weight MaskConfig.hull_beyond_cut, 0.5), so a Gaussian seen "
              "in few views (the back of the skull at the ends of a short arc) does not hang on those views' cuts; "
              "the hull test keeps mask > 0.5. At 0.5 the sample capture's preview lost the back of the skull on "
              "some seeds: held-out PSNR 33.48 / 34.17 / 31.87 dB on seeds 0-2 of one workspace; with 0.25 "
              "seeds 0 and 2 gave 33.75 / 34.26 dB, fog 0.019-0.022 either way")


DEVICES = ("auto", "cuda", "cpu", "mps")


@dataclass
class Config:
    frames: FramesConfig = field(default_factory=FramesConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    sfm: SfmConfig = field(default_factory=SfmConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    isolate: IsolateConfig = field(default_factory=IsolateConfig)
    device: str = knob("auto", "compute device: auto picks CUDA when present, else the CPU",
                       flag="--device", choices=DEVICES, commands=("run", "isolate"))


SECTIONS = ("frames", "faces", "sfm", "masks", "train", "isolate")  # in pipeline order

# Named starting points; flags given on the command line override them.
PRESETS = {
    # A CPU look in ~2 minutes. Its 270-px fine steps are cheap enough to render every pixel, and
    # at 270 px the stronger alpha penalty cost 1-2 dB (docs/benchmarks.md), so it keeps 0.1.
    "preview": {"frames.height": 270, "train.num_iters": 800, "train.fine_pixel_stride": 1,
                "train.bg_alpha_weight": 0.1},
    "standard": {},  # the seed's defaults
    "archive": {"frames.num_frames": 80, "frames.height": 720, "train.num_iters": 7000,
                "train.max_gaussians": 300_000},  # for a GPU
}
DEFAULT_PRESET = "standard"


def _fields():
    """(section or None, dataclass field) for every knob, in a stable order."""
    for section in SECTIONS:
        for f in dataclasses.fields(Config.__dataclass_fields__[section].default_factory):
            yield section, f
    yield None, Config.__dataclass_fields__["device"]


def option_schema(command: str | None = None) -> list[dict]:
    """The command-line options as plain data: flag, key ('section.name'), type, default, bounds,
    choices, help. The CLI's parser and the add-on's properties are both built from this."""
    options = []
    for section, f in _fields():
        meta = f.metadata
        if not meta.get("flag") or (command is not None and command not in meta["commands"]):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        options.append({"flag": meta["flag"], "key": f"{section}.{f.name}" if section else f.name,
                        "type": type(default).__name__, "default": default, "min": meta["min"],
                        "max": meta["max"], "choices": list(meta["choices"]) if meta["choices"] else None,
                        "invert": meta["invert"], "help": meta["help"], "commands": list(meta["commands"])})
    return options


def get_value(cfg: Config, key: str):
    section, _, name = key.rpartition(".")
    return getattr(getattr(cfg, section) if section else cfg, name)


def set_value(cfg: Config, key: str, value) -> None:
    section, _, name = key.rpartition(".")
    setattr(getattr(cfg, section) if section else cfg, name, value)


def make_config(preset: str = DEFAULT_PRESET, **overrides) -> Config:
    """A Config from a preset, then `overrides` given as {'section.name': value}."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    cfg = Config()
    for key, value in {**PRESETS[preset], **overrides}.items():
        set_value(cfg, key, value)
    return cfg


class ConfigError(ValueError):
    """A knob outside its bounds or choices. The message is one line with the flag's name."""


def validate(cfg: Config) -> Config:
    """Check every flagged knob against its bounds and choices (one bound, one message)."""
    for option in option_schema():
        value = get_value(cfg, option["key"])
        flag, lo, hi = option["flag"], option["min"], option["max"]
        if option["choices"] and value not in option["choices"]:
            raise ConfigError(f"{flag} {value!r} is not one of {', '.join(option['choices'])}")
        if lo is not None and hi is not None and not (lo <= value <= hi):
            raise ConfigError(f"{flag} {value:g} is outside {lo:g}..{hi:g}; the default is {option['default']:g}")
        if isinstance(value, float) and value != value:
            raise ConfigError(f"{flag} is not a number")
    return cfg


def config_hash(*parts) -> str:
    """Stable short hash of dataclasses / plain values, for stage markers."""
    def plain(x):
        return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
