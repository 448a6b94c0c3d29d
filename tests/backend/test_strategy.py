"""Densification (strategy.py): grow, prune, the opacity reset, the max_gaussians cap, optimizer
state that follows its rows; same results as gsplat 1.5.3's DefaultStrategy where the rules agree;
and no gsplat needed anywhere on the CPU path."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from facesplat.render import rasterize
from facesplat.strategy import HeadStrategy, quat_to_rotmat, scaled_strategy

REPO = Path(__file__).resolve().parents[2]
PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")
SMALL, LARGE = 0.005, 0.05  # Gaussian sizes either side of grow_scale3d (0.01) x scene_scale (1)


def make_splats(n: int, seed: int = 0, size: float = SMALL, opacity: float = 0.5):
    """n Gaussians whose sh0 red channel holds their index (a tag that rides along every edit), one
    Adam per parameter with one step taken and moments overwritten to `index + 1` per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n, dtype=torch.float32)
    sh0 = torch.zeros(n, 1, 3)
    sh0[:, 0, 0] = ids
    params = torch.nn.ParameterDict({
        "means": torch.randn(n, 3, generator=g) * 0.1,
        "scales": torch.full((n, 3), size).log(),
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        "opacities": torch.full((n,), opacity).logit(),
        "sh0": sh0,
        "shN": torch.randn(n, 3, 3, generator=g),
    })  # fmt: skip
    optimizers = {k: torch.optim.Adam([{"params": params[k], "lr": 1e-3, "name": k}], eps=1e-15) for k in params}
    for k, p in params.items():
        value = p.detach().clone()
        p.grad = torch.ones_like(p)
        optimizers[k].step()  # creates Adam's state for p
        optimizers[k].zero_grad(set_to_none=True)
        with torch.no_grad():
            p.copy_(value)  # and back to the values chosen above
        tag = (ids + 1).reshape(-1, *[1] * (p.dim() - 1)).expand_as(p)
        optimizers[k].state[p]["exp_avg"] = tag.clone()
        optimizers[k].state[p]["exp_avg_sq"] = 2 * tag.clone()
    return params, optimizers


def fake_info(n: int, grad_norm: torch.Tensor, visible: torch.Tensor | None = None, width=100, height=100):
    """An `info` as the renderers return it, means2d's gradient set so that the strategy's
    normalised screen gradient of Gaussian i is exactly grad_norm[i] (x only)."""
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.grad = torch.zeros(1, n, 2)
    means2d.grad[0, :, 0] = grad_norm / (width / 2.0)
    radii = torch.full((1, n, 2), 3, dtype=torch.int32)
    if visible is not None:
        radii[0, ~visible] = 0
    return {"means2d": means2d, "radii": radii, "width": width, "height": height, "n_cameras": 1,
            "gaussian_ids": None}


def refine_once(strategy, params, optimizers, grads, visible=None, step=None):
    state = strategy.initialize_state(scene_scale=1.0)
    step = strategy.refine_start_iter + strategy.refine_every if step is None else step
    strategy.step_post_backward(params, optimizers, state, step, fake_info(len(grads), grads, visible))
    return state


def tags(params) -> torch.Tensor:
    return params["sh0"][:, 0, 0].detach().long()


def strategy_for_tests(**kw) -> HeadStrategy:
    base = dict(refine_start_iter=0, refine_every=10, reset_every=10**6, refine_stop_iter=10**6, grow_grad2d=1e-3)
    return HeadStrategy(**{**base, **kw})


def check_rows_consistent(params, optimizers, copied: set[int]):
    """Every parameter has one row per Gaussian; each optimizer's moments either still belong to
    the Gaussian in that row (tag + 1) or are zero for a row new since the moments were made."""
    n = len(params["means"])
    ids = tags(params)
    for name in PARAM_NAMES:
        p = params[name]
        assert p.shape[0] == n, name
        opt = optimizers[name]
        assert opt.param_groups[0]["params"][0] is p, f"{name}: the optimizer does not hold the new tensor"
        state = opt.state[p]
        for key, factor in (("exp_avg", 1.0), ("exp_avg_sq", 2.0)):
            rows = state[key].reshape(n, -1)
            assert rows.shape[0] == n
            is_zero = (rows == 0).all(dim=1)
            is_own = (rows == factor * (ids[:, None] + 1).float()).all(dim=1)
            assert (is_zero | is_own).all(), f"{name}.{key}: rows that belong to another Gaussian"
            # each Gaussian that was never touched keeps its moments
            untouched = torch.tensor([int(i) not in copied for i in ids])
            assert is_own[untouched].all(), f"{name}.{key}: an untouched Gaussian lost its moments"
    for opt in optimizers.values():  # and Adam still steps on the edited tensors
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.zeros_like(p)
        opt.step()


def test_duplicates_small_gaussians_with_high_gradient():
    params, optimizers = make_splats(6, size=SMALL)
    before = {k: v.detach().clone() for k, v in params.items()}
    grads = torch.tensor([0.0, 5e-3, 0.0, 2e-3, 5e-4, 0.0])  # 1 and 3 above grow_grad2d
    state = refine_once(strategy_for_tests(), params, optimizers, grads)
    assert tags(params).tolist() == [0, 1, 2, 3, 4, 5, 1, 3]
    for k in PARAM_NAMES:  # the copies are exact, the originals untouched
        assert torch.equal(params[k][:6], before[k]) and torch.equal(params[k][6:], before[k][[1, 3]]), k
    for k in PARAM_NAMES:  # the copies start with zero moments
        m = optimizers[k].state[params[k]]["exp_avg"]
        assert torch.equal(m[6:], torch.zeros_like(m[6:])), k
    check_rows_consistent(params, optimizers, copied={1, 3})
    assert state["grad2d"].shape == (8,) and not state["grad2d"].any(), "running stats reset after refining"


def test_splits_large_gaussians_into_two_smaller_ones_inside_them():
    torch.manual_seed(0)
    params, optimizers = make_splats(5, size=LARGE)
    before = {k: v.detach().clone() for k, v in params.items()}
    grads = torch.tensor([0.0, 5e-3, 0.0, 0.0, 2e-3])
    refine_once(strategy_for_tests(), params, optimizers, grads)
    # the split ones leave their place; two of each are appended
    assert tags(params).tolist() == [0, 2, 3, 1, 4, 1, 4]
    new_scales = params["scales"][3:].exp()
    assert torch.allclose(new_scales, torch.full_like(new_scales, LARGE / 1.6))
    for row, parent in zip(range(3, 7), [1, 4, 1, 4]):
        offset = params["means"][row] - before["means"][parent]
        # drawn from the parent's own Gaussian: a few standard deviations at most, never the same point
        assert 0 < offset.norm() < 5 * LARGE * 3**0.5
        for k in ("quats", "opacities", "sh0", "shN"):
            assert torch.equal(params[k][row], before[k][parent]), k
    check_rows_consistent(params, optimizers, copied={1, 4})


def test_split_is_reproducible_for_a_seed():
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        params, optimizers = make_splats(20, size=LARGE)
        refine_once(strategy_for_tests(), params, optimizers, torch.linspace(0, 4e-3, 20))
        runs.append(params["means"].detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_prunes_transparent_gaussians():
    params, optimizers = make_splats(6)
    with torch.no_grad():
        params["opacities"][[0, 4]] = torch.tensor(0.001).logit()  # below prune_opa = 0.005
    refine_once(strategy_for_tests(), params, optimizers, torch.zeros(6))
    assert tags(params).tolist() == [1, 2, 3, 5]
    check_rows_consistent(params, optimizers, copied=set())


def test_gradient_is_averaged_over_the_views_that_saw_the_gaussian():
    """Gaussian 0 is seen in 2 of 4 steps with a gradient of 1.5e-3: its mean is 1.5e-3 (grows);
    divided by all 4 steps it would be 0.75e-3 (would not)."""
    strategy = strategy_for_tests(refine_every=4)
    params, optimizers = make_splats(2)
    state = strategy.initialize_state(scene_scale=1.0)
    seen = [torch.tensor([True, True]), torch.tensor([False, True]), torch.tensor([True, True]),
            torch.tensor([False, True])]
    for step, visible in enumerate(seen, start=1):
        info = fake_info(2, torch.tensor([1.5e-3, 0.0]), visible)
        strategy.step_post_backward(params, optimizers, state, step, info)
    assert tags(params).tolist() == [0, 1, 0]


def test_opacity_reset_fires_on_its_step_only():
    strategy = strategy_for_tests(reset_every=50, refine_every=1000, refine_stop_iter=200)
    params, optimizers = make_splats(4, opacity=0.9)
    state = strategy.initialize_state(scene_scale=1.0)
    zero = torch.zeros(4)
    for step in (0, 49, 51):  # step 0 is no reset step
        strategy.step_post_backward(params, optimizers, state, step, fake_info(4, zero))
        assert torch.allclose(params["opacities"].sigmoid(), torch.full((4,), 0.9)), step
    strategy.step_post_backward(params, optimizers, state, 100, fake_info(4, zero))
    assert torch.allclose(params["opacities"].sigmoid(), torch.full((4,), 2 * strategy.prune_opa))
    moments = optimizers["opacities"].state[params["opacities"]]
    assert not moments["exp_avg"].any() and not moments["exp_avg_sq"].any(), "the reset forgets opacity moments"
    assert optimizers["means"].state[params["means"]]["exp_avg"].all(), "other parameters keep theirs"
    # past refine_stop_iter nothing happens any more
    with torch.no_grad():
        params["opacities"].fill_(torch.tensor(0.9).logit())
    strategy.step_post_backward(params, optimizers, state, 200, fake_info(4, zero))
    assert torch.allclose(params["opacities"].sigmoid(), torch.full((4,), 0.9))


def test_opacity_reset_only_lowers_opacities():
    strategy = strategy_for_tests(reset_every=10, refine_every=1000)
    params, optimizers = make_splats(3, opacity=0.003)
    strategy.step_post_backward(params, optimizers, strategy.initialize_state(), 10, fake_info(3, torch.zeros(3)))
    assert torch.allclose(params["opacities"].sigmoid(), torch.full((3,), 0.003))


def test_growth_stops_at_max_gaussians_keeping_the_highest_gradients():
    params, optimizers = make_splats(10)
    grads = torch.tensor([1, 9, 2, 8, 3, 7, 4, 6, 5, 0], dtype=torch.float32) * 1e-3  # 8 above the threshold
    refine_once(strategy_for_tests(max_gaussians=13), params, optimizers, grads)
    assert len(params["means"]) == 13
    assert tags(params)[10:].tolist() == [1, 3, 5], "the three highest gradients grew"
    check_rows_consistent(params, optimizers, copied={1, 3, 5})
    # at the cap nothing grows, whatever the gradients
    refine_once(strategy_for_tests(max_gaussians=13), params, optimizers, torch.full((13,), 1.0))
    assert len(params["means"]) == 13


def test_scaled_schedule():
    s = scaled_strategy(3000, max_gaussians=1000, grow_grad2d=8e-4)
    assert (s.refine_start_iter, s.refine_stop_iter, s.refine_every, s.reset_every) == (50, 1500, 10, 300)
    s = scaled_strategy(150, max_gaussians=1000, grow_grad2d=8e-4)
    assert (s.refine_start_iter, s.refine_every, s.reset_every) == (20, 10, 200), "floors for short runs"
    assert (s.max_gaussians, s.grow_grad2d) == (1000, 8e-4)


def test_check_sanity():
    params, optimizers = make_splats(3)
    HeadStrategy().check_sanity(params, optimizers)
    with pytest.raises(ValueError, match="optimizers"):
        HeadStrategy().check_sanity(params, {k: v for k, v in optimizers.items() if k != "shN"})


def test_quat_to_rotmat_is_a_rotation():
    q = torch.nn.functional.normalize(torch.randn(50, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    r = quat_to_rotmat(q)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(50, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(50), atol=1e-5)
    assert torch.allclose(quat_to_rotmat(torch.tensor([0.0, 0.0, 0.0, 1.0])),  # 180 degrees about z
                          torch.diag(torch.tensor([-1.0, -1.0, 1.0])))


def test_with_a_real_render_on_the_cpu():
    """Signals from the compiled CPU renderer: visible Gaussians collect gradient, and a refine
    step grows them."""
    torch.manual_seed(0)
    params, optimizers = make_splats(200, size=0.02)
    with torch.no_grad():
        params["means"] += torch.tensor([0.0, 0.0, 1.0])
    strategy = strategy_for_tests(refine_every=1, grow_grad2d=0.0, max_gaussians=10**6)
    state = strategy.initialize_state(scene_scale=1.0)
    K = torch.tensor([[80.0, 0, 32], [0, 80.0, 24], [0, 0, 1]])
    render, alpha, info = rasterize(
        params["means"], params["quats"], params["scales"].exp(), params["opacities"].sigmoid(),
        torch.cat([params["sh0"], params["shN"]], 1), torch.eye(4), K, 64, 48, sh_degree=1, backend="cpu")
    strategy.step_pre_backward(params, optimizers, state, 1, info)
    (render - 0.3).square().mean().backward()
    visible = (info["radii"] > 0).all(-1)[0]
    strategy.step_post_backward(params, optimizers, state, 1, info)
    assert 0 < int(visible.sum()) < 200
    assert len(params["means"]) > 200  # grew where the gradient was above zero


def test_same_as_gsplat_default_strategy_where_the_rules_agree():
    """Without the reset and below the cap, ours and gsplat's take the same steps to the bit."""
    gsplat_strategy = pytest.importorskip("gsplat.strategy")
    results = []
    for make in (lambda kw: HeadStrategy(**kw), lambda kw: gsplat_strategy.DefaultStrategy(verbose=False, **kw)):
        torch.manual_seed(3)
        params, optimizers = make_splats(300, seed=3, size=SMALL)
        with torch.no_grad():
            params["scales"][::3] = torch.tensor(LARGE).log()
            params["opacities"][::7] = torch.tensor(0.001).logit()
        strategy = make(dict(refine_start_iter=2, refine_every=3, reset_every=10**6, refine_stop_iter=50))
        state = strategy.initialize_state(scene_scale=1.0)
        g = torch.Generator().manual_seed(5)
        for step in range(12):
            n = len(params["means"])
            info = fake_info(n, torch.rand(n, generator=g) * 2e-3, torch.rand(n, generator=g) > 0.3)
            strategy.step_post_backward(params, optimizers, state, step, info)
        results.append((params, optimizers))
    (ours, our_opts), (theirs, their_opts) = results
    assert len(ours["means"]) > 300
    for k in PARAM_NAMES:
        assert torch.equal(ours[k], theirs[k]), k
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(our_opts[k].state[ours[k]][key], their_opts[k].state[theirs[k]][key]), (k, key)


def test_only_the_gsplat_backend_imports_gsplat():
    """Every import, even inside a function, anywhere in the backend package."""
    importers = []
    for path in sorted((REPO / "backend" / "facesplat").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(name.split(".")[0] == "gsplat" for name in names):
                importers.append(path.relative_to(REPO).as_posix())
    assert set(importers) == {"backend/facesplat/render/gsplat_backend.py"}, importers


def test_cpu_training_path_runs_with_gsplat_uninstalled():
    """With gsplat unimportable: the CLI and every stage import, and a CPU step densifies."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "gsplat":
                    raise ImportError("gsplat is blocked in this test")
        sys.meta_path.insert(0, Blocker())
        sys.path.insert(0, {str(REPO / "backend")!r})
        import torch
        import facesplat.cli, facesplat.pipeline, facesplat.train, facesplat.isolate
        from facesplat.render import available_backends, rasterize
        from facesplat.strategy import HeadStrategy
        assert "gsplat" not in available_backends()
        n = 50
        params = torch.nn.ParameterDict({{"means": torch.randn(n, 3) * 0.1 + torch.tensor([0, 0, 1.0]),
            "scales": torch.full((n, 3), 0.02).log(), "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
            "opacities": torch.zeros(n), "colors": torch.rand(n, 3)}})
        opts = {{k: torch.optim.Adam([p]) for k, p in params.items()}}
        s = HeadStrategy(refine_start_iter=0, refine_every=1, grow_grad2d=0.0)
        state = s.initialize_state()
        K = torch.tensor([[80.0, 0, 32], [0, 80.0, 24], [0, 0, 1]])
        img, _, info = rasterize(params["means"], params["quats"], params["scales"].exp(),
                                 params["opacities"].sigmoid(), params["colors"], torch.eye(4), K, 64, 48)
        s.step_pre_backward(params, opts, state, 1, info)
        img.sum().backward()
        s.step_post_backward(params, opts, state, 1, info)
        assert len(params["means"]) > n
        assert not [m for m in sys.modules if m.split(".")[0] == "gsplat"]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
