"""Rasterizer backends against a brute-force reference, on tiny scenes, on the CPU.

The reference below shares no code with the package: every pixel meets every Gaussian, nearest
first, with the per-pixel rules of gsplat's kernel (skip alpha < 1/255, clamp alpha to 0.99,
stop before T <= 1e-4). No tiles, no pixel boxes: it checks the binning as well as the maths.
Everything runs in float64, so forward values and gradients must agree to ~1e-9.
"""

from __future__ import annotations

import math

import pytest
import torch

from facesplat.errors import DeviceError
from facesplat.render import available_backends, cpu_projection, projection, rasterize
from facesplat.render.projection import TILE_SIZE, bin_tiles, eval_sh, prepare, project_gaussians, strided_camera

BACKENDS = ["torch", "cpu"]
PARAMS = ("means", "quats", "scales", "opacities", "colors")


# ----------------------------------------------------------------------------- reference


def sh_basis(degree: int, d: torch.Tensor) -> torch.Tensor:  # d [N, 3] unit -> [N, (degree+1)^2]
    x, y, z = d.unbind(-1)
    basis = [torch.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        c1 = 0.4886025119029199
        basis += [-c1 * y, c1 * z, -c1 * x]
    if degree >= 2:
        basis += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.31539156525252005 * (2 * z * z - x * x - y * y),
            -1.0925484305920792 * x * z,
            0.5462742152960396 * (x * x - y * y),
        ]
    if degree >= 3:
        basis += [
            -0.5900435899266435 * y * (3 * x * x - y * y),
            2.890611442640554 * x * y * z,
            -0.4570457994644658 * y * (4 * z * z - x * x - y * y),
            0.3731763325901154 * z * (2 * z * z - 3 * x * x - 3 * y * y),
            -0.4570457994644658 * x * (4 * z * z - x * x - y * y),
            1.445305721320277 * z * (x * x - y * y),
            -0.5900435899266435 * x * (x * x - 3 * y * y),
        ]
    return torch.stack(basis, -1)


def reference_rasterize(means, quats, scales, opacities, colors, viewmat, K, width, height,
                        sh_degree=None, backgrounds=None):  # fmt: skip
    """Returns render [H, W, D], alpha [H, W, 1], means2d [N, 2] (a graph node, for its grad)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ R.T + t  # [N, 3] camera space
    z = torch.where(p[:, 2] > 0.01, p[:, 2], 1.0)  # near plane; others are skipped below
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    means2d = torch.stack([fx * p[:, 0] / z + cx, fy * p[:, 1] / z + cy], -1)

    qw, qx, qy, qz = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    rot = torch.stack([
        torch.stack([1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)], -1),
        torch.stack([2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)], -1),
        torch.stack([2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)], -1),
    ], -2)  # fmt: skip
    cov_cam = R @ rot @ torch.diag_embed(scales**2) @ rot.transpose(1, 2) @ R.T
    # Jacobian at the centre, clamped to 1.3x the field of view as 3DGS does.
    u = (p[:, 0] / z).clamp(-cx / fx - 0.15 * width / fx, (width - cx) / fx + 0.15 * width / fx)
    v = (p[:, 1] / z).clamp(-cy / fy - 0.15 * height / fy, (height - cy) / fy + 0.15 * height / fy)
    zero = torch.zeros_like(z)
    J = torch.stack([
        torch.stack([fx / z, zero, -fx * u / z], -1),
        torch.stack([zero, fy / z, -fy * v / z], -1),
    ], -2)  # fmt: skip
    cov2d = J @ cov_cam @ J.transpose(1, 2) + 0.3 * torch.eye(2, dtype=means.dtype)
    conic = torch.linalg.inv(cov2d)  # [N, 2, 2]

    if sh_degree is None:
        feats = colors
    else:
        campos = -R.T @ t
        dirs = torch.nn.functional.normalize(means - campos, dim=-1)
        coeffs = colors[:, : (sh_degree + 1) ** 2]
        feats = ((sh_basis(sh_degree, dirs)[:, :, None] * coeffs).sum(1) + 0.5).clamp_min(0.0)

    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2).to(means.dtype) + 0.5  # [P, 2] pixel centres
    T = torch.ones(pix.shape[0], dtype=means.dtype)
    out = torch.zeros(pix.shape[0], feats.shape[1], dtype=means.dtype)
    done = torch.zeros(pix.shape[0], dtype=torch.bool)
    for g in torch.argsort(p[:, 2], stable=True).tolist():
        if p[g, 2] <= 0.01:
            continue
        d = means2d[g] - pix  # [P, 2]
        sigma = 0.5 * torch.einsum("pi,ij,pj->p", d, conic[g], d)
        alpha = torch.clamp_max(opacities[g] * torch.exp(-sigma), 0.99)
        drawn = (sigma >= 0) & (alpha >= 1 / 255) & ~done
        stop = drawn & (T * (1 - alpha) <= 1e-4)
        done = done | stop
        drawn = drawn & ~stop
        out = out + torch.where(drawn, alpha * T, 0.0)[:, None] * feats[g]
        T = torch.where(drawn, T * (1 - alpha), T)
    if backgrounds is not None:
        out = out + T[:, None] * backgrounds
    return out.reshape(height, width, -1), (1 - T).reshape(height, width, 1), means2d


# ----------------------------------------------------------------------------- scenes


def look_at_camera(width: int, height: int, dtype=torch.float64):
    """A camera 2 units from the origin, turned a little, fx ~ image width."""
    angle = 0.3
    R = torch.tensor(
        [[math.cos(angle), 0.0, -math.sin(angle)], [0.0, 1.0, 0.0], [math.sin(angle), 0.0, math.cos(angle)]],
        dtype=dtype,
    )
    viewmat = torch.eye(4, dtype=dtype)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = torch.tensor([0.05, -0.02, 2.0], dtype=dtype)
    f = 1.1 * width
    K = torch.tensor([[f, 0.0, width / 2 + 1.3], [0.0, f, height / 2 - 0.7], [0.0, 0.0, 1.0]], dtype=dtype)
    return viewmat, K


def make_scene(n, width, height, seed, sh_degree=None, n_features=3, opaque=False, dtype=torch.float64):
    """Gaussians in front of the camera, some straddling tiles and image borders, a few behind it."""
    g = torch.Generator().manual_seed(seed)
    viewmat, K = look_at_camera(width, height, dtype)
    # Spread in camera space over ~1.3x the view, then bring back to world space.
    depth = 1.6 + 0.8 * torch.rand(n, generator=g, dtype=dtype)
    u = (torch.rand(n, generator=g, dtype=dtype) * 1.3 - 0.65) * width / K[0, 0]
    v = (torch.rand(n, generator=g, dtype=dtype) * 1.3 - 0.65) * height / K[1, 1]
    cam = torch.stack([u * depth, v * depth, depth], -1)
    if n >= 10:
        cam[:2, 2] = torch.tensor([-0.5, 0.005], dtype=dtype)  # behind the camera, inside the near plane
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    scene = {
        "means": (cam - t) @ R,
        "quats": torch.randn(n, 4, generator=g, dtype=dtype),
        "scales": 0.05 * torch.exp(0.5 * torch.randn(n, 3, generator=g, dtype=dtype)),  # ~2 px
        "opacities": 0.05 + 0.9 * torch.rand(n, generator=g, dtype=dtype),
        "viewmat": viewmat,
        "K": K,
        "width": width,
        "height": height,
        "sh_degree": sh_degree,
        "backgrounds": None,
    }
    if opaque:  # stack them near the centre with alpha past the clamp: early stop and clamping
        scene["means"] = scene["means"] * 0.2
        scene["opacities"] = 0.97 + 0.03 * torch.rand(n, generator=g, dtype=dtype)
        scene["scales"] = scene["scales"] * 3
    if sh_degree is None:
        scene["colors"] = torch.rand(n, n_features, generator=g, dtype=dtype)
    else:
        scene["colors"] = 0.5 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype)
    return scene


SCENES = {
    # name: (n, width, height, seed, sh_degree, n_features, opaque, with_background)
    "small_rgb": (3, 24, 16, 1, None, 3, False, False),
    "sh3_background": (50, 64, 48, 2, 3, 3, False, True),
    "sh1": (30, 40, 24, 3, 1, 3, False, False),
    "opaque_stack_2ch": (40, 32, 32, 4, None, 2, True, True),
    "four_features": (25, 48, 40, 5, None, 4, False, True),
    "sh0_background": (20, 32, 24, 6, 0, 3, False, True),  # the training's first quarter
}


def build(name: str, dtype=torch.float64) -> dict:
    n, width, height, seed, sh_degree, n_features, opaque, with_bg = SCENES[name]
    scene = make_scene(n, width, height, seed, sh_degree, n_features, opaque, dtype)
    if with_bg:
        scene["backgrounds"] = torch.linspace(0.2, 0.8, scene["colors"].shape[-1], dtype=dtype)
    return scene


def render_with_grads(fn, scene: dict, seed: int = 0):
    """Render, backpropagate a random linear loss of image and alpha; return values and grads."""
    params = {k: scene[k].clone().requires_grad_() for k in PARAMS}
    bg = scene["backgrounds"]
    bg = None if bg is None else bg.clone().requires_grad_()
    rest = {k: scene[k] for k in ("K", "width", "height", "sh_degree")}
    # The camera's pose moves with a twist (rotation, translation), zero here: its gradient is what
    # pose refinement (pose.py) learns from, through the viewmat.
    viewmat = scene["viewmat"]
    twist = torch.zeros(6, dtype=viewmat.dtype, device=viewmat.device, requires_grad=True)
    hat = torch.zeros(4, 4, dtype=viewmat.dtype, device=viewmat.device)
    hat[2, 1], hat[0, 2], hat[1, 0] = twist[0], twist[1], twist[2]
    hat[1, 2], hat[2, 0], hat[0, 1] = -twist[0], -twist[1], -twist[2]
    hat[:3, 3] = twist[3:]
    render, alpha, means2d = fn(**params, **rest, viewmat=torch.linalg.matrix_exp(hat) @ viewmat, backgrounds=bg)
    means2d.retain_grad()
    g = torch.Generator().manual_seed(seed)
    # Same weights whatever the dtype and device of the render.
    loss = (render * torch.rand(render.shape, generator=g, dtype=torch.float64).to(render)).sum()
    loss = loss + (alpha * torch.rand(alpha.shape, generator=g, dtype=torch.float64).to(alpha)).sum()
    loss.backward()
    grads = {k: params[k].grad for k in PARAMS}
    grads["means2d"] = means2d.grad.reshape(-1, 2)
    grads["pose"] = twist.grad
    if bg is not None:
        grads["backgrounds"] = bg.grad
    return render.detach(), alpha.detach(), grads


def backend_fn(backend: str):
    def fn(**kwargs):
        render, alpha, info = rasterize(**kwargs, backend=backend)
        return render, alpha, info["means2d"]

    return fn


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(SCENES))
def test_matches_reference(backend: str, name: str):
    scene = build(name)
    ref_render, ref_alpha, ref_grads = render_with_grads(reference_rasterize, scene)
    render, alpha, grads = render_with_grads(backend_fn(backend), scene)

    assert ref_alpha.max() > 0.5, "the scene should cover part of the image"
    torch.testing.assert_close(render, ref_render, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(alpha, ref_alpha, rtol=1e-9, atol=1e-10)
    for key, ref in ref_grads.items():
        assert ref.abs().max() > 0, key
        torch.testing.assert_close(grads[key], ref, rtol=1e-7, atol=1e-9, msg=lambda m: f"d/d{key}: {m}")


def test_binning_drops_no_drawn_pixel():
    """Every pixel where a Gaussian reaches alpha >= 1/255 lies in its box and in a tile that lists it."""
    scene = make_scene(200, 64, 48, seed=7)
    width, height = scene["width"], scene["height"]
    opacities = scene["opacities"]
    means2d, conics, depths, radii = project_gaussians(
        scene["means"], scene["quats"], scene["scales"], opacities, scene["viewmat"], scene["K"], width, height
    )
    tile_offsets, gauss_ids = bin_tiles(means2d, radii, depths, width, height)

    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)  # [P]
    dx = means2d[:, 0, None] - (xs + 0.5)  # [N, P]
    dy = means2d[:, 1, None] - (ys + 0.5)
    a, b, c = conics[:, 0, None], conics[:, 1, None], conics[:, 2, None]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    drawn = (opacities[:, None] * torch.exp(-sigma) >= 1 / 255) & (depths[:, None] > 0.01)  # [N, P]
    assert drawn.sum() > 1000
    in_box = (dx.abs() <= radii[:, 0, None]) & (dy.abs() <= radii[:, 1, None])
    assert in_box[drawn].all()

    tiles_x = math.ceil(width / TILE_SIZE)
    n_tiles = tile_offsets.numel() - 1
    listed = torch.zeros(n_tiles, scene["means"].shape[0], dtype=torch.bool)
    listed[torch.repeat_interleave(torch.arange(n_tiles), tile_offsets.diff()), gauss_ids] = True
    tile_of_pixel = (ys // TILE_SIZE) * tiles_x + xs // TILE_SIZE  # [P]
    assert listed[tile_of_pixel].T[drawn].all()
    # Within a tile, the list runs front to back.
    for t in range(n_tiles):
        ids = gauss_ids[tile_offsets[t] : tile_offsets[t + 1]]
        assert (depths[ids].diff() >= 0).all()


def off_side_scene(sh_degree: int) -> dict:
    """make_scene plus large Gaussians far off both sides, whose boxes still reach into the image:
    their EWA Jacobian is taken at the clamped point (projection.py)."""
    scene = make_scene(60, 48, 40, seed=11, sh_degree=sh_degree)
    viewmat, K = scene["viewmat"], scene["K"]
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    u = torch.tensor([-1.2, -1.0, 1.0, 1.3], dtype=torch.float64) * 48 / K[0, 0]
    cam = torch.stack([u * 2.0, torch.zeros(4, dtype=torch.float64), torch.full((4,), 2.0, dtype=torch.float64)], -1)
    g = torch.Generator().manual_seed(3)
    scene["means"] = torch.cat([scene["means"], (cam - t) @ R])
    scene["quats"] = torch.cat([scene["quats"], torch.randn(4, 4, generator=g, dtype=torch.float64)])
    scene["scales"] = torch.cat([scene["scales"], torch.full((4, 3), 0.6, dtype=torch.float64)])
    scene["opacities"] = torch.cat([scene["opacities"], torch.full((4,), 0.9, dtype=torch.float64)])
    scene["colors"] = torch.cat([scene["colors"], 0.5 * torch.randn(4, *scene["colors"].shape[1:], generator=g,
                                                                    dtype=torch.float64)])
    return scene


@pytest.mark.parametrize("sh_degree", [0, 1, 2])
@pytest.mark.parametrize("tiles", ["all", "checkerboard"])
def test_compiled_projection_matches_pytorch(sh_degree: int, tiles: str):
    """cpu_projection.prepare (numba, analytic backward) against projection.prepare (PyTorch,
    autograd): the same centres, conics, depths, radii, colours and tile lists, and the same
    gradients of means, quats, scales, SH and the viewmat, Gaussians at the clamped Jacobian
    included. Degree 2 takes eval_sh's route for the colours."""
    scene = off_side_scene(sh_degree)
    width, height = scene["width"], scene["height"]
    tile_mask = None if tiles == "all" else checkerboard_tiles(width, height)
    lim = (width - scene["K"][0, 2]) / scene["K"][0, 0] + 0.15 * width / scene["K"][0, 0]
    outputs, grads = {}, {}
    for name, module in (("numba", cpu_projection), ("torch", projection)):
        inputs = {k: scene[k].clone().requires_grad_() for k in ("means", "quats", "scales", "colors", "viewmat")}
        p = module.prepare(inputs["means"], inputs["quats"], inputs["scales"], scene["opacities"], inputs["colors"],
                           inputs["viewmat"], scene["K"], width, height, sh_degree, tile_mask)
        shown = (p.radii > 0).all(-1)  # the compositor gives the others no gradient
        g = torch.Generator().manual_seed(5)
        loss = sum((x * torch.rand(x.shape, generator=g, dtype=torch.float64) * shown.reshape(-1, *[1] * (x.dim() - 1)))
                   .sum() for x in (p.means2d[0], p.conics, p.features))
        loss.backward()
        outputs[name], grads[name] = p, {k: v.grad for k, v in inputs.items()}
    numba_p, torch_p = outputs["numba"], outputs["torch"]
    cam = scene["means"] @ scene["viewmat"][:3, :3].T + scene["viewmat"][:3, 3]
    clamped = (cam[:, 0] / cam[:, 2]).abs() > lim
    assert (clamped & (torch_p.radii > 0).all(-1)).sum() >= 2, "the scene should show Gaussians at the clamp"
    assert torch.equal(numba_p.radii, torch_p.radii)
    assert torch.equal(numba_p.tile_offsets, torch_p.tile_offsets) and torch.equal(numba_p.gauss_ids, torch_p.gauss_ids)
    for key in ("means2d", "conics", "features"):
        torch.testing.assert_close(getattr(numba_p, key), getattr(torch_p, key), rtol=1e-10, atol=1e-12,
                                   msg=lambda m: f"{key}: {m}")
    torch.testing.assert_close(numba_p.depths, torch_p.depths, rtol=1e-12, atol=1e-12)
    for key, ref in grads["torch"].items():
        assert ref.abs().max() > 0, key
        torch.testing.assert_close(grads["numba"][key], ref, rtol=1e-8, atol=1e-10, msg=lambda m: f"d/d{key}: {m}")


def test_compiled_binning_matches_pytorch():
    """The counting sort lists the same (tile, Gaussian) pairs in the same order as the key sort,
    for float32 centres (the training's) with a tile mask, ties in depth included."""
    g = torch.Generator().manual_seed(2)
    n, width, height = 3000, 200, 150
    means2d = (torch.rand(n, 2, generator=g) * torch.tensor([260.0, 200.0]) - 30.0).float()
    radii = torch.randint(0, 40, (n, 2), generator=g, dtype=torch.int32)
    depths = torch.randint(0, 50, (n,), generator=g).float()  # many ties: the order must stay stable
    tile_mask = torch.rand(math.ceil(height / TILE_SIZE), math.ceil(width / TILE_SIZE), generator=g) < 0.5
    for mask in (None, tile_mask):
        offsets, ids = bin_tiles(means2d, radii, depths, width, height, tile_mask=mask)
        c_offsets, c_ids, drawn = cpu_projection.bin_tiles(means2d, radii, depths, width, height, mask)
        assert ids.numel() > 2 * n  # boxes over several tiles
        assert torch.equal(c_offsets, offsets) and torch.equal(c_ids, ids)
        expected = torch.zeros(n, dtype=torch.bool)
        expected[ids] = True
        assert torch.equal(torch.from_numpy(drawn), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_feature_gradient_is_blending_weight(backend: str):
    """d sum(render) / d colors_i = sum over pixels of alpha_i T_i (D = 1, features all ones)."""
    scene = build("four_features")
    n = scene["means"].shape[0]
    feats = torch.ones(n, 1, dtype=torch.float64, requires_grad=True)
    rest = {k: scene[k] for k in ("means", "quats", "scales", "opacities", "viewmat", "K", "width", "height")}
    render, alpha, _ = rasterize(colors=feats, **rest, backend=backend)
    render.sum().backward()
    # With ones, the weights of a pixel sum to its alpha.
    torch.testing.assert_close(feats.grad.sum(), alpha.sum())
    ref_feats = torch.ones(n, 1, dtype=torch.float64, requires_grad=True)
    ref_render, _, _ = reference_rasterize(colors=ref_feats, **rest)
    ref_render.sum().backward()
    torch.testing.assert_close(feats.grad, ref_feats.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_inputs(backend: str):
    scene64 = build("sh3_background")
    scene32 = {k: v.float() if torch.is_tensor(v) else v for k, v in scene64.items()}
    render64, _, grads64 = render_with_grads(backend_fn(backend), scene64)
    render32, alpha32, grads32 = render_with_grads(backend_fn(backend), scene32)
    assert render32.dtype == alpha32.dtype == grads32["means"].dtype == torch.float32
    torch.testing.assert_close(render32.double(), render64, rtol=0, atol=1e-5)
    for key in ("opacities", "colors", "means2d"):
        torch.testing.assert_close(grads32[key].double(), grads64[key], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_info_layout(backend: str):
    scene = build("sh3_background")
    n = scene["means"].shape[0]
    _, _, info = rasterize(**scene, backend=backend)
    assert info["means2d"].shape == (1, n, 2)
    assert info["radii"].shape == (1, n, 2) and info["radii"].dtype == torch.int32
    assert info["depths"].shape == (1, n)
    assert (info["width"], info["height"], info["n_cameras"], info["gaussian_ids"]) == (64, 48, 1, None)
    visible = (info["radii"] > 0).all(-1)[0]
    assert not visible[:2].any(), "the two Gaussians behind the near plane are culled"
    assert visible.sum() > n // 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_strategy_reads_info(backend: str):
    gsplat = pytest.importorskip("gsplat")
    scene = build("sh3_background", dtype=torch.float32)
    params = torch.nn.ParameterDict(
        {
            "means": scene["means"],
            "scales": scene["scales"].log(),
            "quats": scene["quats"],
            "opacities": torch.logit(scene["opacities"]),
            "colors": scene["colors"],
        }
    )
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = gsplat.DefaultStrategy(refine_start_iter=0, refine_every=1, grow_grad2d=0.0, verbose=False)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    render, _, info = rasterize(
        params["means"], params["quats"], params["scales"].exp(), params["opacities"].sigmoid(), params["colors"],
        scene["viewmat"], scene["K"], scene["width"], scene["height"], sh_degree=3, backend=backend,
    )  # fmt: skip
    strategy.step_pre_backward(params, optimizers, state, step=0, info=info)
    render.square().mean().backward()
    strategy.step_post_backward(params, optimizers, state, step=0, info=info)
    assert (state["grad2d"] > 0).sum() > 10
    assert torch.equal(state["count"] > 0, (info["radii"] > 0).all(-1)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["empty", "all_culled"])
def test_nothing_to_draw(backend: str, case: str):
    scene = build("four_features")
    if case == "empty":
        scene.update({k: scene[k][:0] for k in PARAMS})
    else:
        scene["means"] = scene["means"] - 100.0 * scene["viewmat"][2, :3]  # all behind the camera
    params = {k: scene[k].clone().requires_grad_() for k in PARAMS}
    rest = {k: scene[k] for k in ("viewmat", "K", "width", "height", "backgrounds")}
    render, alpha, info = rasterize(**params, **rest, backend=backend)
    assert torch.equal(render, scene["backgrounds"].expand(40, 48, 4))
    assert torch.equal(alpha, torch.zeros(40, 48, 1, dtype=torch.float64))
    assert not (info["radii"] > 0).any()
    info["means2d"].retain_grad()
    render.sum().backward()
    for k in PARAMS:
        assert torch.equal(params[k].grad, torch.zeros_like(params[k])), k
    assert torch.equal(info["means2d"].grad, torch.zeros_like(info["means2d"]))


def test_backend_choice():
    assert available_backends()[-2:] == ["cpu", "torch"]
    scene = build("small_rgb")
    if "gsplat" not in available_backends():
        with pytest.raises(DeviceError):
            rasterize(**scene, backend="gsplat")
    with pytest.raises(ValueError):
        rasterize(**scene, backend="vulkan")
    auto, _, _ = rasterize(**scene)
    cpu, _, _ = rasterize(**scene, backend="cpu")
    assert torch.equal(auto, cpu)


def test_projection_and_sh_match_gsplat_torch_impl():
    """gsplat's pure-PyTorch twins run on the CPU: same centres, conics, depths and SH colours."""
    pytest.importorskip("gsplat")
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

    scene = build("sh3_background")
    means, quats, scales, opacities = (scene[k] for k in ("means", "quats", "scales", "opacities"))
    means2d, conics, depths, radii = project_gaussians(
        means, quats, scales, opacities, scene["viewmat"], scene["K"], scene["width"], scene["height"]
    )
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    g_radii, g_means2d, g_depths, g_conics, _ = _fully_fused_projection(
        means, covars, scene["viewmat"][None], scene["K"][None], scene["width"], scene["height"]
    )
    visible = (radii > 0).all(-1)
    torch.testing.assert_close(means2d[visible], g_means2d[0][visible])
    torch.testing.assert_close(conics[visible], g_conics[0][visible])
    torch.testing.assert_close(depths, g_depths[0])
    # gsplat's CUDA box shrinks with opacity (ours too); its torch twin always uses 3.33 sigma.
    assert (radii <= g_radii[0]).all() and torch.equal(visible, (g_radii[0] > 0).all(-1) & visible)

    dirs = torch.randn(20, 3, dtype=torch.float64)
    coeffs = torch.randn(20, 16, 3, dtype=torch.float64)
    for degree in range(4):
        expected = torch.clamp_min(_spherical_harmonics(degree, dirs, coeffs) + 0.5, 0.0)
        torch.testing.assert_close(eval_sh(degree, dirs, coeffs), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_parity_with_gsplat_cuda():
    pytest.importorskip("gsplat")
    scene = build("sh3_background", dtype=torch.float32)
    scene["opacities"] = scene["opacities"].clamp_max(0.95)  # gsplat clamps alpha at 0.999, we at 0.99
    cpu_render, cpu_alpha, cpu_grads = render_with_grads(backend_fn("cpu"), scene)
    cuda_scene = {k: v.cuda() if torch.is_tensor(v) else v for k, v in scene.items()}
    gs_render, gs_alpha, gs_grads = render_with_grads(backend_fn("gsplat"), cuda_scene)
    torch.testing.assert_close(gs_render.cpu(), cpu_render, rtol=0, atol=1e-4)
    torch.testing.assert_close(gs_alpha.cpu(), cpu_alpha, rtol=0, atol=1e-4)
    for key, grad in cpu_grads.items():
        torch.testing.assert_close(gs_grads[key].cpu(), grad, rtol=1e-2, atol=1e-3, msg=lambda m: f"d/d{key}: {m}")
    _, _, cpu_info = rasterize(**scene, backend="cpu")
    _, _, gs_info = rasterize(**cuda_scene, backend="gsplat")
    assert (gs_info["radii"].cpu() - cpu_info["radii"]).abs().max() <= 1  # ceil() of float32 vs float64


# ----------------------------------------------------------------------------- float32, tile masks


@pytest.mark.parametrize("name", list(SCENES))
def test_float32_kernels_match_the_float64_reference(name: str):
    """The cpu backend computes in float32 for float32 inputs (T in float64): render, alpha and every
    gradient stay within float32's reach of the float64 reference, the opaque stack included,
    where the backward's T recovery divides by 1 - alpha close to 0.01."""
    scene64 = build(name)
    scene32 = {k: v.float() if torch.is_tensor(v) else v for k, v in scene64.items()}
    ref_render, ref_alpha, ref_grads = render_with_grads(reference_rasterize, scene64)
    render, alpha, grads = render_with_grads(backend_fn("cpu"), scene32)
    assert render.dtype == alpha.dtype == torch.float32
    torch.testing.assert_close(render.double(), ref_render, rtol=0, atol=2e-5)
    torch.testing.assert_close(alpha.double(), ref_alpha, rtol=0, atol=2e-5)
    for key, ref in ref_grads.items():
        assert grads[key].dtype == torch.float32, key
        # float32 inputs (positions, conics) carry ~1e-7 relative error into sums of many terms
        scale = ref.abs().max()
        torch.testing.assert_close(grads[key].double(), ref, rtol=1e-3, atol=2e-4 * float(scale),
                                   msg=lambda m: f"d/d{key}: {m}")


def checkerboard_tiles(width: int, height: int) -> torch.Tensor:
    ty, tx = torch.meshgrid(torch.arange(math.ceil(height / TILE_SIZE)), torch.arange(math.ceil(width / TILE_SIZE)),
                            indexing="ij")
    return (tx + ty) % 2 == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["sh3_background", "opaque_stack_2ch", "four_features"])
def test_tile_mask_renders_only_its_tiles(backend: str, name: str):
    """Inside the selected tiles: the reference's pixels and, for a loss that reads only them, the
    reference's gradients. Outside: background, alpha 0. Gaussians drawn in no selected tile report
    radii 0."""
    scene = build(name)
    width, height = scene["width"], scene["height"]
    tiles = checkerboard_tiles(width, height)
    pixels = tiles.repeat_interleave(TILE_SIZE, 0).repeat_interleave(TILE_SIZE, 1)[:height, :width, None]
    assert 0 < pixels.float().mean() < 1

    def masked(fn):
        def render(**kwargs):
            out, alpha, means2d = fn(**kwargs)
            return out * pixels, alpha * pixels, means2d
        return render

    def with_tiles(**kwargs):
        render, alpha, info = rasterize(**kwargs, backend=backend, tile_mask=tiles)
        with_tiles.info, with_tiles.render, with_tiles.alpha = info, render.detach(), alpha.detach()
        return render, alpha, info["means2d"]

    ref_render, ref_alpha, ref_grads = render_with_grads(masked(reference_rasterize), scene)
    _, _, grads = render_with_grads(masked(with_tiles), scene)
    render, alpha = with_tiles.render, with_tiles.alpha
    torch.testing.assert_close(render * pixels, ref_render, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(alpha * pixels, ref_alpha, rtol=1e-9, atol=1e-10)
    assert torch.equal(alpha[~pixels], torch.zeros_like(alpha[~pixels]))
    background = scene["backgrounds"] if scene["backgrounds"] is not None else torch.zeros(render.shape[-1])
    assert torch.equal(render[~pixels[..., 0]], background.expand(int((~pixels).sum()), -1).to(render))
    for key, ref in ref_grads.items():
        torch.testing.assert_close(grads[key], ref, rtol=1e-7, atol=1e-9, msg=lambda m: f"d/d{key}: {m}")

    _, _, full_info = rasterize(**scene, backend=backend)
    seen = (with_tiles.info["radii"] > 0).all(-1)[0]
    seen_full = (full_info["radii"] > 0).all(-1)[0]
    assert (seen <= seen_full).all()
    one_tile = torch.zeros_like(tiles)
    one_tile[0, 0] = True
    _, _, corner = rasterize(**scene, backend=backend, tile_mask=one_tile)
    in_corner = (corner["radii"] > 0).all(-1)[0]
    assert (in_corner <= seen).all() and in_corner.any()
    if name != "opaque_stack_2ch":  # there every Gaussian covers the centre, hence every tile
        assert in_corner.sum() < seen_full.sum()
    p = prepare(*(scene[k] for k in ("means", "quats", "scales", "opacities", "colors", "viewmat", "K")),
                width, height, scene["sh_degree"], tiles)
    assert torch.equal(torch.unique(p.gauss_ids), torch.where(seen)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride, offset_x, offset_y", [(2, 0, 0), (2, 1, 0), (2, 1, 1), (3, 2, 1)])
def test_strided_camera_renders_every_stride_th_pixel(backend: str, stride: int, offset_x: int, offset_y: int):
    """What the CPU trainer's fine steps render (train.py, `fine_pixel_stride`): the full image's
    pixels (stride v + offset_y, stride u + offset_x), with their gradients, for a loss that reads
    only those."""
    scene = build("sh3_background")
    width, height = scene["width"], scene["height"]
    rows, cols = slice(offset_y, None, stride), slice(offset_x, None, stride)

    def every_stride_th(fn):
        def render(**kwargs):
            out, alpha, means2d = fn(**kwargs)
            return out[rows, cols], alpha[rows, cols], means2d
        return render

    def strided(K, width, height, **kwargs):
        K = strided_camera(K, stride, offset_x, offset_y)
        w, h = len(range(offset_x, width, stride)), len(range(offset_y, height, stride))
        render, alpha, info = rasterize(K=K, width=w, height=h, **kwargs, backend=backend, pixel_stride=stride)
        return render, alpha, info["means2d"]

    ref_render, ref_alpha, ref_grads = render_with_grads(every_stride_th(reference_rasterize), scene)
    render, alpha, grads = render_with_grads(strided, scene)
    assert render.shape[:2] == ref_render.shape[:2] == (len(range(offset_y, height, stride)),
                                                       len(range(offset_x, width, stride)))
    assert ref_alpha.max() > 0.5
    torch.testing.assert_close(render, ref_render, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(alpha, ref_alpha, rtol=1e-9, atol=1e-10)
    for key, ref in ref_grads.items():
        if key == "means2d":  # in the strided camera's pixels: stride times the full camera's
            ref = ref * stride
        torch.testing.assert_close(grads[key], ref, rtol=1e-7, atol=1e-9, msg=lambda m: f"d/d{key}: {m}")
