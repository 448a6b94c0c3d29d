"""Unit tests of what was only tested end to end: the config schema and markers' hash, the stage
runner's markers, the device choice, the loss and SSIM, and the isolation vote."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facesplat import pipeline
from facesplat.cli import build_parser
from facesplat.config import Config, IsolateConfig, TrainConfig, config_hash, make_config, option_schema
from facesplat.core.config import get_value
from facesplat.core.cameras import CameraFrame
from facesplat.core.ply import Splats
from facesplat.errors import DeviceError
from facesplat.isolate import select_head, visibility_stats
from facesplat.render.device import backend_for, choose_device
from facesplat.stage import StageContext
from facesplat.train import head_loss, head_tiles, sample_tiles, sampled_crop, ssim
from facesplat.views import View
from facesplat.workspace import Workspace


# --- configuration --------------------------------------------------------------------------

def knobs(part, prefix=""):
    """(name, dataclass holding it, field) for every knob, nested dataclasses included."""
    for f in dataclasses.fields(part):
        value = getattr(part, f.name)
        if dataclasses.is_dataclass(value):
            yield from ((name, holder, g) for name, holder, g in knobs(value, f"{prefix}{f.name}."))
        else:
            yield f"{prefix}{f.name}", part, f


def test_every_knob_changes_its_stage_hash():
    from facesplat.core.config import SECTIONS

    base = Config()
    for section in SECTIONS:
        part = getattr(base, section)
        for name, holder, f in knobs(part):
            before = config_hash(part)
            value = getattr(holder, f.name)
            setattr(holder, f.name, type(value)((not value) if isinstance(value, bool) else value * 2 + 1))
            assert config_hash(part) != before, f"{section}.{name}"
            setattr(holder, f.name, value)


def test_parser_is_built_from_the_schema_with_its_defaults():
    parser = build_parser()
    run = parser.parse_args(["run", "--video", "v.mp4", "--output", "h.ply"])
    for option in option_schema("run"):
        assert getattr(run, option["key"]) is None  # not given: the preset decides
    cfg = make_config()
    for option in option_schema():
        assert get_value(cfg, option["key"]) == option["default"]
    flags = {a for action in parser._subparsers._group_actions[0].choices["run"]._actions for a in action.option_strings}
    assert {o["flag"] for o in option_schema("run")} <= flags


def test_presets_and_flags():
    from facesplat.cli import config_from_args

    args = build_parser().parse_args(["run", "--video", "v", "--output", "h.ply", "--preset", "preview", "--height", "360"])
    cfg = config_from_args(args, "run")
    assert cfg.frames.height == 360 and cfg.train.num_iters == 800 and cfg.frames.num_frames == 40
    assert TrainConfig().max_gaussians == make_config().train.max_gaussians  # one default


# --- the stage runner's markers ----------------------------------------------------------------

def test_a_changed_knob_reruns_its_stage_and_the_later_ones(tmp_path, monkeypatch):
    calls = []
    stages = [pipeline.Stage(name, (lambda part: lambda r: getattr(r.cfg, part))(part),
                             (lambda name: lambda r: calls.append(name) or {})(name), lambda r: "")
              for name, part in (("frames", "frames"), ("faces", "faces"), ("sfm", "sfm"), ("masks", "masks"),
                                 ("train", "train"), ("isolate", "isolate"))]
    ws = Workspace(tmp_path / "ws").prepare()
    cfg = Config()
    run = pipeline.Run(ws, cfg, StageContext())
    pipeline.run_stages(run, stages)
    assert calls == ["frames", "faces", "sfm", "masks", "train", "isolate"]
    calls.clear()
    pipeline.run_stages(run, stages)
    assert calls == []
    cfg.train.num_iters = 10
    pipeline.run_stages(run, stages)
    assert calls == ["train", "isolate"]
    assert set(ws.read_report()["stage_seconds"]) == {"frames", "faces", "sfm", "masks", "train", "isolate"}


# --- device ----------------------------------------------------------------------------------

def test_device_choice():
    assert choose_device("cpu").type == "cpu"
    assert choose_device("auto", say=lambda m: None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert backend_for("cpu") == "cpu"  # numba is installed: the compiled kernels
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="--device cpu"):
            choose_device("cuda")


# --- loss -------------------------------------------------------------------------------------

def reference_ssim(a, b, size=11, sigma=1.5):
    """SSIM with conv2d and replicate padding: the textbook formulation."""
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = (g / g.sum())
    window = (g[:, None] * g[None, :])[None, None].repeat(3, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.pad(t, (size // 2,) * 4, mode="replicate"), window, groups=3)

    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s[0].mean(0)[..., None]


def test_ssim_matches_the_textbook_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 56, 3, generator=g)
    b = (a + 0.1 * torch.randn(40, 56, 3, generator=g)).clamp(0, 1)
    assert torch.allclose(ssim(a, b), reference_ssim(a, b), atol=1e-5)
    assert torch.allclose(ssim(a, a), torch.ones(40, 56, 1), atol=1e-5)


def test_head_loss_terms():
    cfg = TrainConfig()
    image = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(32, 32, 1)
    mask[8:24, 8:24] = 1
    alpha = mask.clone()
    assert head_loss(image, alpha, image, mask, cfg) < 1e-6  # perfect on the head, no alpha outside
    off_head = image.clone()
    off_head[:2] = 1 - off_head[:2]  # wrong only beyond the SSIM window around the head: ignored
    assert head_loss(off_head, alpha, image, mask, cfg) < 1e-6
    assert head_loss(image, torch.ones_like(alpha), image, mask, cfg) == pytest.approx(
        cfg.bg_alpha_weight * float((1 - mask).mean()), rel=1e-5)


def test_head_tiles_cover_the_head_and_ssims_window():
    mask = torch.zeros(70, 90, 1)
    mask[30:34, 38:42] = 0.5  # soft head pixels in tiles (rows 1-2, column 2), 6 px from its left edge
    tiles = head_tiles(mask)
    assert tiles.shape == (5, 6)
    # the 11 x 11 window of the head pixels reaches x 33..46 and y 25..38: tile column 2, rows 1..2
    expected = torch.zeros(5, 6, dtype=torch.bool)
    expected[1:3, 2] = True
    assert torch.equal(tiles, expected)
    mask[30:34, 36:38] = 1.0  # now the window reaches x 31: tile column 1 too
    assert torch.equal(head_tiles(mask)[1:3, 1:3], torch.ones(2, 2, dtype=torch.bool))


def test_sampled_background_tiles_keep_the_alpha_penalty_on_average():
    cfg = TrainConfig()
    h, w = 60, 75
    mask = torch.zeros(h, w, 1)
    mask[20:40, 25:50] = 1.0
    head = head_tiles(mask)
    alpha = torch.rand(h, w, 1, generator=torch.Generator().manual_seed(2))
    image = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(3))
    full = head_loss(image, alpha, image, mask, cfg)
    tiles, weight = sample_tiles(head, 1.0, np.random.default_rng(0), h, w)
    assert tiles is None and weight is None  # share 1: every tile, the loss unchanged
    rng = np.random.default_rng(0)
    losses, shares = [], []
    for _ in range(400):
        tiles, weight = sample_tiles(head, 0.25, rng, h, w)
        assert tiles[head].all(), "every head tile is rendered"
        pixels = tiles.repeat_interleave(16, 0).repeat_interleave(16, 1)[:h, :w, None]
        assert torch.equal(weight > 0, pixels)  # weight only where rendered
        losses.append(float(head_loss(image, alpha * pixels, image, mask, cfg, weight)))
        shares.append(float(tiles[~head].float().mean()))
    assert np.mean(shares) == pytest.approx(0.25, abs=0.03)
    assert np.mean(losses) == pytest.approx(float(full), rel=0.03)


def test_the_fine_steps_strided_crops_partition_the_full_crop():
    """The stride^2 phases of `sampled_crop` together hold each pixel of the full-resolution crop
    exactly once, with its mask value, and their cameras are the crop's camera seen at those pixels."""
    cam = camera([0.0, -1.0, 0.2], width=53, height=38)
    view = view_with_centre_mask(cam)
    view.image = torch.rand(cam.height, cam.width, 3, generator=torch.Generator().manual_seed(4))
    view.box = (3, 2, 50, 37)  # an odd-sized box: the phases differ in size
    image, mask, K, w, h = view.crop()
    seen = torch.zeros(h, w, dtype=torch.int64)
    for oy in range(2):
        for ox in range(2):
            part, part_mask, part_K, pw, ph, tiles = sampled_crop(view, 1, 2, ox, oy)
            assert part.shape == (ph, pw, 3) and (pw, ph) == (len(range(ox, w, 2)), len(range(oy, h, 2)))
            assert torch.equal(part, image[oy::2, ox::2]) and torch.equal(part_mask, mask[oy::2, ox::2])
            assert torch.equal(tiles, head_tiles(part_mask))
            # the fine pixel (2u + ox, 2v + oy)'s centre lands on the strided pixel (u, v)'s centre
            x = (2 * torch.arange(pw) + ox + 0.5 - K[0, 2]) / K[0, 0]  # the fine pixel centres' rays
            y = (2 * torch.arange(ph) + oy + 0.5 - K[1, 2]) / K[1, 1]
            torch.testing.assert_close(part_K[0, 0] * x + part_K[0, 2], torch.arange(pw) + 0.5)
            torch.testing.assert_close(part_K[1, 1] * y + part_K[1, 2], torch.arange(ph) + 0.5)
            seen[oy::2, ox::2] += 1
    assert torch.equal(seen, torch.ones_like(seen))


# --- isolation vote ------------------------------------------------------------------------------

def camera(position, width=64, height=64, f=60.0):
    """A camera at `position` looking at the origin, world +Z up."""
    forward = -np.asarray(position, float) / np.linalg.norm(position)
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ np.asarray(position, float)
    return CameraFrame(frame_index=0, image="", mask=None, width=width, height=height, fx=f, fy=f,
                       cx=width / 2, cy=height / 2, distortion={"model": "PINHOLE", "params": []},
                       world_to_camera=w2c)


def view_with_centre_mask(cam, radius=12):
    yy, xx = np.mgrid[:cam.height, :cam.width]
    mask = ((xx + 0.5 - cam.cx) ** 2 + (yy + 0.5 - cam.cy) ** 2 < radius ** 2).astype(np.float32)
    return View(camera=cam, image=torch.zeros(cam.height, cam.width, 3), mask=torch.from_numpy(mask[..., None]),
                viewmat=torch.from_numpy(cam.world_to_camera.astype(np.float32)),
                K=torch.from_numpy(cam.K.astype(np.float32)), box=(0, 0, cam.width, cam.height))


def test_isolation_keeps_the_head_and_drops_the_room():
    # A Gaussian at the origin (the head) and one far to the side (a wall), seen from a ring.
    means = np.array([[0, 0, 0], [0.0, 0.0, 0.4]], np.float32)  # the second sits above the head
    n = len(means)
    splats = Splats(means=means, sh0=np.zeros((n, 3), np.float32), shN=np.zeros((n, 3, 3), np.float32),
                    opacities=np.full(n, 2.0, np.float32), scales=np.full((n, 3), np.log(0.02), np.float32),
                    quats=np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1)))
    views = [view_with_centre_mask(camera([np.cos(a), np.sin(a), 0.0])) for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
    cfg = IsolateConfig()
    stats = visibility_stats(splats, views, cfg, StageContext(device=torch.device("cpu")))
    assert list(stats["visible_views"]) == [8, 8]
    assert list(stats["inside_views"]) == [8, 0] and list(stats["hull_views"]) == [8, 0]
    assert list(select_head(splats, stats, cfg)) == [True, False]
    faint = dataclasses.replace(splats, opacities=np.full(n, -4.0, np.float32))  # sigmoid(-4) < 0.05
    assert not select_head(faint, stats, cfg).any()


def test_the_visibility_vote_counts_the_hulls_half_weighted_rim_as_head():
    """Masks weigh the hull's rim that a view's own cut calls background by half
    (MaskConfig.hull_beyond_cut). A Gaussian on that rim in every view is inside for the
    visibility vote (inside_mask_level 0.25), not for the hull test (mask > 0.5); one beyond
    the rim is neither."""
    means = np.array([[0, 0, 0], [0.0, 0.0, 0.17], [0.0, 0.0, 0.4]], np.float32)  # head, rim, beyond
    n = len(means)
    splats = Splats(means=means, sh0=np.zeros((n, 3), np.float32), shN=np.zeros((n, 3, 3), np.float32),
                    opacities=np.full(n, 2.0, np.float32), scales=np.full((n, 3), np.log(0.01), np.float32),
                    quats=np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1)))
    views = []
    for a in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        view = view_with_centre_mask(camera([np.cos(a), np.sin(a), 0.0]), radius=6)
        rim = view_with_centre_mask(view.camera, radius=16).mask
        views.append(dataclasses.replace(view, mask=torch.maximum(view.mask, rim * (127 / 255))))
    cfg = IsolateConfig()
    stats = visibility_stats(splats, views, cfg, StageContext(device=torch.device("cpu")))
    assert list(stats["inside_views"]) == [8, 8, 0] and list(stats["hull_views"]) == [8, 0, 0]
    assert list(select_head(splats, stats, cfg)) == [True, False, False], "on the rim in every view: off the hull"
    strict = visibility_stats(splats, views, dataclasses.replace(cfg, inside_mask_level=0.5),
                              StageContext(device=torch.device("cpu")))
    assert list(strict["inside_views"]) == [8, 0, 0], "at 0.5 the rim is background"
