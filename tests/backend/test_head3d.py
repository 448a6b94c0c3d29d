"""The head in 3D from cameras, faces and sparse points (head3d.py), and its masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facesplat.config import MaskConfig
from facesplat.core.cameras import CameraFrame, project_points
from facesplat.errors import StageError
from facesplat.head3d import (HeadVolume, Neck, carve_visual_hull, convergence_point, estimate_head_volume,
                              optical_axes, pixels_in_frame, project_ellipsoid, triangulate_faces)
from facesplat.faces import HeadEllipse
from facesplat.masks import hull_mask, masks_from_head_volume, search_volume
from facesplat.stage import StageContext
from facesplat.workspace import Workspace

HEAD = np.array([0.1, -0.2, 0.3])  # the synthetic head's centre, away from the origin on purpose
HEAD_AXES = np.array([0.08, 0.1, 0.12])  # x, y, z semi-axes (metres)
WIDTH, HEIGHT, FOCAL = 480, 270, 300.0


def look_at(eye, target, k1=0.0) -> CameraFrame:
    """An upright OpenCV camera at `eye` looking at `target` (+Z up)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([right, down, forward])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    return CameraFrame(frame_index=0, image="frames/000000.png", width=WIDTH, height=HEIGHT, fx=FOCAL, fy=FOCAL,
                       cx=WIDTH / 2, cy=HEIGHT / 2, world_to_camera=w2c,
                       distortion={"model": "SIMPLE_RADIAL", "params": [k1]})


def orbit(n=24, arc_deg=160.0, radius=0.6, aim_jitter=0.03, seed=0, k1=0.0) -> list[CameraFrame]:
    """Cameras on an arc around HEAD, slightly above it, each aimed a few cm off the centre."""
    rng = np.random.default_rng(seed)
    cameras = []
    for k, azimuth in enumerate(np.radians(np.linspace(-arc_deg / 2, arc_deg / 2, n))):
        eye = HEAD + radius * np.array([np.sin(azimuth), -np.cos(azimuth), 0.15])
        cam = look_at(eye, HEAD + rng.normal(scale=aim_jitter, size=3), k1)
        cam.frame_index, cam.image = k, f"frames/{k:06d}.png"
        cameras.append(cam)
    return cameras


def head_points(n=600, seed=1) -> np.ndarray:
    """Sparse points on the front half of the head (where the texture is) and a far background."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(4 * n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    u = u[u[:, 1] < 0.3][:n]  # the cameras see the front (-y) and the sides
    background = rng.normal(size=(n, 3))
    background = HEAD + 2.0 * background / np.linalg.norm(background, axis=1, keepdims=True)
    return np.concatenate([HEAD + u * HEAD_AXES, background])


def inside(uv, outline) -> np.ndarray:
    """Per pixel: its normalised radius in the ellipse (<= 1 inside)."""
    (cx, cy), (a, b), angle = outline
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    d = uv - [cx, cy]
    return np.hypot((d @ [c, s]) / a, (d @ [-s, c]) / b)


def test_head_found_from_cameras_alone_on_an_orbit_without_a_face():
    cameras = orbit()
    volume = estimate_head_volume(cameras, head_points())
    assert volume.center_source == "cameras" and volume.extent_source == "points"
    assert np.linalg.norm(volume.center - HEAD) < 0.02  # aims jitter by 3 cm
    up = volume.rotation[:, 2]
    assert up @ [0, 0, 1] > 0.999
    # The box reaches the farthest points on either side of the centre: at least the head.
    assert volume.semi_axes[2] > HEAD_AXES[2] and volume.semi_axes[2] < 1.6 * HEAD_AXES[2]
    assert min(volume.semi_axes[:2]) > HEAD_AXES[0] and max(volume.semi_axes[:2]) < 1.6 * HEAD_AXES[1]

    without_points = estimate_head_volume(cameras, np.zeros((0, 3)))
    assert without_points.extent_source == "default"
    assert np.linalg.norm(without_points.center - HEAD) < 0.02
    assert np.allclose(without_points.semi_axes, without_points.semi_axes[0])  # a sphere
    assert 0.1 < without_points.semi_axes[0] < 0.3  # a head's size at 0.6 m


@pytest.mark.parametrize("k1", [0.0, 0.08])
def test_projected_ellipse_holds_the_ellipsoid_tightly(k1):
    rotation, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    volume = HeadVolume(HEAD, rotation, HEAD_AXES, "cameras", "points")
    surface = volume.surface_points(20000)
    angles = []
    for cam in orbit(n=6, radius=0.45, k1=k1):
        outline = project_ellipsoid(volume, cam)
        uv, depth = project_points(surface, cam)
        assert (depth > 0).all()
        radius = inside(uv, outline)
        assert radius.max() <= 1.0 + 2e-3 and radius.max() > 0.995, (radius.max(), outline)
        angles.append(outline[2])
    assert np.ptp(angles) > 5, "a turned ellipsoid projects to turned ellipses"


def test_projection_is_none_when_the_head_is_behind_or_around_the_camera():
    volume = HeadVolume(HEAD, np.eye(3), HEAD_AXES, "cameras", "points")
    assert project_ellipsoid(volume, look_at(HEAD + [0, -0.6, 0], HEAD + [0, -1.2, 0])) is None  # behind
    assert project_ellipsoid(volume, look_at(HEAD + [0, -0.05, 0], HEAD + [0, 1.0, 0])) is None  # inside


def test_cameras_that_do_not_converge_are_refused():
    line = [look_at(np.array([x, -1.0, 0.0]), np.array([x, 0.0, 0.0])) for x in np.linspace(-2, 2, 12)]
    with pytest.raises(StageError, match="nearly the same direction") as walk_by:
        estimate_head_volume(line, np.zeros((0, 3)))
    assert walk_by.value.exit_code == 3
    outwards = [look_at(HEAD, HEAD + [np.cos(t), np.sin(t), 0.0]) for t in np.linspace(0, 2 * np.pi, 12, endpoint=False)]
    centers, directions = optical_axes(outwards)
    with pytest.raises(StageError, match="look away"):
        convergence_point(centers + 0.5 * directions, directions)  # on a circle, looking outwards
    rng = np.random.default_rng(0)
    scattered = [look_at(rng.uniform(-2, 2, 3), rng.uniform(-2, 2, 3) + [0, 0, 3]) for _ in range(12)]
    with pytest.raises(StageError, match="do not look at one common subject"):
        convergence_point(*optical_axes(scattered))


def test_faces_are_triangulated_despite_a_wrong_view():
    cameras = orbit(n=8, aim_jitter=0.05, k1=0.05)
    ellipses = []
    for cam in cameras:
        (uv,), (depth,) = project_points(HEAD[None], cam)
        ellipses.append(HeadEllipse("frontal", tuple(uv), (0.09 * FOCAL / depth, 0.12 * FOCAL / depth)))
    ellipses[2] = None  # no face there
    ellipses[5] = HeadEllipse("frontal", (ellipses[5].center[0] + 150, ellipses[5].center[1]), ellipses[5].axes)
    faces = triangulate_faces(cameras, ellipses)
    assert faces.inliers.tolist() == [True, True, False, True, True, False, True, True]
    assert np.linalg.norm(faces.center - HEAD) < 1e-3
    assert faces.radii == pytest.approx((0.09, 0.12), rel=0.05)

    volume = estimate_head_volume(cameras, np.zeros((0, 3)), ellipses)
    assert volume.center_source == "faces" and volume.extent_source == "faces"
    assert np.linalg.norm(volume.center - HEAD) < 1e-3
    assert triangulate_faces(cameras, [ellipses[0]] + [None] * 7) is None  # one view fixes nothing


def test_masks_from_the_head_volume(tmp_path):
    ws = Workspace(tmp_path / "ws").prepare()
    cameras = orbit(n=4)
    cameras[3] = look_at(HEAD + [0, -0.6, 0], HEAD + [0, -1.2, 0])  # looks away from the head
    cameras[3].frame_index, cameras[3].image = 3, "frames/000003.png"
    volume = HeadVolume(HEAD, np.eye(3), HEAD_AXES, "cameras", "points")
    records = masks_from_head_volume(cameras, volume, ws.root, ws.fresh_dir(ws.masks_dir), MaskConfig(refine=False),
                                     StageContext())
    assert [r["source"] for r in records] == ["projected"] * 4
    assert [r["shape"] for r in records] == ["ellipse"] * 3 + ["empty"]
    for cam, record in zip(cameras[:3], records):
        mask = cv2.imread(str(ws.root / record["mask"]), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (HEIGHT, WIDTH)
        inner, _ = project_points(HEAD + 0.7 * (volume.surface_points(500) - HEAD), cam)
        assert (mask[inner[:, 1].astype(int), inner[:, 0].astype(int)] > 240).all()  # the edge is soft
        assert (mask >= 128).sum() == pytest.approx(np.pi * np.prod(record["axes"]), rel=0.05)
        assert mask[0, 0] == 0
    assert not cv2.imread(str(ws.root / records[3]["mask"]), cv2.IMREAD_GRAYSCALE).any()


def sphere_silhouettes(cameras, volume):
    """bool [H, W] per camera: the sphere's exact outline, filled (pinhole cameras)."""
    silhouettes = []
    for cam in cameras:
        (cx, cy), (a, b), angle = project_ellipsoid(volume, cam)
        image = np.zeros((HEIGHT, WIDTH), np.uint8)
        cv2.ellipse(image, (round(cx), round(cy)), (round(a), round(b)), angle, 0, 360, 255, thickness=-1)
        silhouettes.append(image > 0)
    return silhouettes


def agreement(mask, truth):
    """(recall, precision) of a uint8 mask against a bool silhouette."""
    covered = mask >= 128
    return (covered & truth).sum() / truth.sum(), (covered & truth).sum() / covered.sum()


def test_visual_hull_outvotes_one_wrong_silhouette():
    """Sixteen cameras around a sphere; one view's cut also keeps a patch of background beside
    the head, another's loses a slice of the head. The hull carved from all of them is right in
    every view: the patch is carved by the views that see past it, and with one miss allowed the
    lost slice is outvoted."""
    cameras = orbit(n=16, arc_deg=337.5, radius=0.6, aim_jitter=0.0)
    sphere = HeadVolume(HEAD, np.eye(3), np.full(3, 0.1), "cameras", "points")
    search = search_volume(sphere)
    truth = sphere_silhouettes(cameras, sphere)
    silhouettes = [t.copy() for t in truth]
    (cx, cy), (a, b), _ = project_ellipsoid(sphere, cameras[2])
    patch = np.zeros((HEIGHT, WIDTH), bool)
    patch[int(cy - 0.5 * b):int(cy + 0.5 * b), int(cx + 0.8 * a):int(cx + 1.2 * a)] = True
    silhouettes[2] |= patch  # background kept beside the head, inside the search ellipse
    # The hull's outline may overshoot the head's by a few pixels (voxels, soft edge): the patch
    # is what lies beyond those.
    beyond = patch & ~cv2.dilate(truth[2].astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    (cx, cy), (a, b), _ = project_ellipsoid(sphere, cameras[5])
    lost = truth[5] & (np.arange(WIDTH)[None, :] < cx - 0.5 * a)
    silhouettes[5] &= ~lost  # the head's left third cut away

    cfg = MaskConfig()
    patch_only = silhouettes[:5] + [truth[5]] + silhouettes[6:]
    strict = carve_visual_hull(search, cameras, patch_only, 1.0, cfg.hull_resolution)
    assert strict.voters == 16 and 0 < len(strict.centers) < strict.candidates
    masks = [hull_mask(strict, cam, search, cfg) for cam in cameras]
    assert (masks[2] >= 128)[beyond].mean() < 0.02, "the other views carve the patch away"
    for k, cam in enumerate(cameras):
        recall, precision = agreement(masks[k], truth[k])
        assert recall > 0.97 and precision > 0.9, (k, recall, precision)

    strict = carve_visual_hull(search, cameras, silhouettes, 1.0, cfg.hull_resolution)
    masks = [hull_mask(strict, cam, search, cfg) for cam in cameras]
    assert (masks[5] >= 128)[lost].mean() < 0.2, "the classic hull: one view's miss carves for all"
    tolerant = carve_visual_hull(search, cameras, silhouettes, 15 / 16, cfg.hull_resolution)
    masks = [hull_mask(tolerant, cam, search, cfg) for cam in cameras]
    assert (masks[5] >= 128)[lost].mean() > 0.97, "one miss in sixteen views is outvoted"
    assert (masks[2] >= 128)[beyond].mean() < 0.02, "and the patch is still carved"
    for k, cam in enumerate(cameras):
        recall, precision = agreement(masks[k], truth[k])
        assert recall > 0.97 and precision > 0.8, (k, recall, precision)


def neck_silhouettes(cameras, radius, bottom):
    """bool [H, W] per camera: a vertical cylinder of `radius` under HEAD, from its centre down
    to the height `bottom` (relative to HEAD), filled."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    ring = np.column_stack([radius * np.cos(t), radius * np.sin(t), np.zeros_like(t)])
    points = HEAD + np.concatenate([ring, ring + [0.0, 0.0, bottom]])
    silhouettes = []
    for cam in cameras:
        uv, _ = project_points(points, cam)
        image = np.zeros((HEIGHT, WIDTH), np.uint8)
        cv2.fillConvexPoly(image, cv2.convexHull(np.round(uv).astype(np.int32)), 255)
        silhouettes.append(image > 0)
    return silhouettes


def test_the_neck_ends_where_the_rule_says_not_where_the_cuts_stop():
    """A head on a neck that runs on out of the volume, seen from 40 views round it; a fifth of
    the cuts end the neck just under the head (skin against skin: each cut ends it at its own
    height). The 92 % vote then carves the neck away under the head. With a `Neck`, a view whose
    cut ends above a voxel in the neck has no say on it: the neck is kept, no wider than it is,
    down to the cut, and nothing below."""
    cameras = orbit(n=40, arc_deg=351, radius=0.6, aim_jitter=0.0)
    sphere = HeadVolume(HEAD, np.eye(3), np.full(3, 0.1), "cameras", "points")
    search = search_volume(sphere)
    heads, radius = sphere_silhouettes(cameras, sphere), 0.05
    long_necks, short_necks = neck_silhouettes(cameras, radius, -0.2), neck_silhouettes(cameras, radius, -0.05)
    silhouettes = [h | (short if k % 5 == 0 else full)
                   for k, (h, full, short) in enumerate(zip(heads, long_necks, short_necks))]
    vote, resolution = MaskConfig().hull_vote, MaskConfig().hull_resolution

    def neck_voxels(hull, low, high):
        height = hull.centers[:, 2] - HEAD[2]
        return hull.centers[(height > low) & (height < high)]

    plain = carve_visual_hull(search, cameras, silhouettes, vote, resolution)
    assert len(neck_voxels(plain, -0.14, -0.11)) == 0, "the short cuts carve the neck for every view"

    neck = Neck(top=-0.05, cut=-0.14)
    hull = carve_visual_hull(search, cameras, silhouettes, vote, resolution, neck)
    step = hull.voxel_size
    kept = neck_voxels(hull, neck.cut, -0.11)
    assert len(kept), "the neck is kept under the head"
    off_axis = np.linalg.norm((kept - HEAD)[:, :2], axis=1)
    assert off_axis.max() < radius + step, "no wider than the neck"
    assert off_axis.min() < step and len(kept) > 0.5 * np.pi * (radius / step) ** 2, "its whole section"
    assert (hull.centers[:, 2] - HEAD[2] >= neck.cut).all(), "nothing below the cut"
    above = hull.centers[hull.centers[:, 2] - HEAD[2] > neck.top]
    assert len(above) == len(plain.centers[plain.centers[:, 2] - HEAD[2] > neck.top]), "above the neck, the same hull"

    # The masks stage draws the neck for a person (a head placed by faces) from MaskConfig, in
    # the ellipsoid's vertical semi-axes; a head placed by the cameras alone keeps the plain vote.
    from dataclasses import replace

    from facesplat.masks import head_neck
    cfg = MaskConfig()
    person = head_neck(replace(sphere, center_source="faces"), cfg)
    assert (person.top, person.cut) == pytest.approx((0.1 * cfg.neck_top, 0.1 * cfg.neck_cut))
    assert head_neck(sphere, MaskConfig()) is None

    # No cut reaches the neck: it is carved, not kept for want of voters (just under the head,
    # which hides it from cameras above, the views that see it in the head's rows keep it).
    nobody = carve_visual_hull(search, cameras, [h | s for h, s in zip(heads, short_necks)], vote, resolution, neck)
    assert len(neck_voxels(nobody, neck.cut, -0.125)) == 0


def test_visual_hull_ignores_views_without_a_say():
    cameras = orbit(n=6, arc_deg=300, aim_jitter=0.0)
    sphere = HeadVolume(HEAD, np.eye(3), np.full(3, 0.1), "cameras", "points")
    truth = sphere_silhouettes(cameras, sphere)
    empty = np.zeros((HEIGHT, WIDTH), bool)
    hull = carve_visual_hull(search_volume(sphere), cameras, truth[:5] + [None], 1.0, 32)
    assert hull.voters == 5
    assert carve_visual_hull(search_volume(sphere), cameras, truth[:5] + [empty], 1.0, 32).centers.size == 0
    # A voxel outside every frame has no voter against it: a grid far above the cameras stays.
    off = HeadVolume(HEAD + [0.0, 0.0, 3.0], np.eye(3), np.full(3, 0.1), "cameras", "points")
    far = carve_visual_hull(off, cameras, truth, 1.0, 16)
    assert len(far.centers) == far.candidates


def test_the_default_vote_is_the_classic_hull_for_few_views_and_outvotes_a_few_misses_of_many():
    """Eleven photos: a patch of table that ten cuts keep and one carves is carved (few views
    cannot tell a wrong cut from the only view that sees past the table). Forty views: a slice
    of the head that three views' cuts lose is kept."""
    vote, resolution = MaskConfig().hull_vote, MaskConfig().hull_resolution
    sphere = HeadVolume(HEAD, np.eye(3), np.full(3, 0.1), "cameras", "points")
    search = search_volume(sphere)
    below = HEAD - [0.0, 0.0, 0.1]  # a flat slab under the head, inside the search volume
    slab = HeadVolume(below, np.eye(3), np.array([0.12, 0.12, 0.02]), "cameras", "points")

    def with_slab(cameras, carved_by):
        silhouettes = []
        for k, (cam, head) in enumerate(zip(cameras, sphere_silhouettes(cameras, sphere))):
            if k != carved_by:
                head = head | sphere_silhouettes([cam], slab)[0]
            silhouettes.append(head)
        return silhouettes

    for n, carved_by in ((11, 4), (40, 7)):
        cameras = orbit(n=n, arc_deg=360 * (n - 1) / n, radius=0.6, aim_jitter=0.0)
        hull = carve_visual_hull(search, cameras, with_slab(cameras, carved_by), vote, resolution)
        off_head = np.linalg.norm(hull.centers - HEAD, axis=1) > 0.1 + hull.voxel_size
        pixel = pixels_in_frame(hull.centers, cameras[carved_by])
        head_there = sphere_silhouettes([cameras[carved_by]], sphere)[0].reshape(-1)[np.maximum(pixel, 0)]
        near_slab = off_head & (np.abs(hull.centers[:, 2] - below[2]) < 0.02 + hull.voxel_size) & ~head_there
        if n == 11:
            assert not near_slab.any(), "one view in eleven carves the table"
        else:
            assert near_slab.any(), "one view in forty is outvoted"

    cameras = orbit(n=40, arc_deg=351, radius=0.6, aim_jitter=0.0)
    truth = sphere_silhouettes(cameras, sphere)
    silhouettes = [t.copy() for t in truth]
    losing = (3, 17, 30)
    for k in losing:
        (cx, _), (a, _), _ = project_ellipsoid(sphere, cameras[k])
        silhouettes[k] &= np.arange(WIDTH)[None, :] > cx - 0.4 * a  # a third of the head cut away
    hull = carve_visual_hull(search, cameras, silhouettes, vote, resolution)
    for k in losing:
        recall, _ = agreement(hull_mask(hull, cameras[k], search, MaskConfig()), truth[k])
        assert recall > 0.97, (k, recall)
    strict = carve_visual_hull(search, cameras, silhouettes, 1.0, resolution)
    assert min(agreement(hull_mask(strict, cameras[k], search, MaskConfig()), truth[k])[0] for k in losing) < 0.9
