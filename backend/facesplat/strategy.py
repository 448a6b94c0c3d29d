"""Densification: gsplat's DefaultStrategy (plain PyTorch; runs with any of our renderers).

Two changes, as a small subclass:
- the opacity reset actually happens (gsplat 1.5.3 writes `step % every == 0 & step > 0`, which
  Python reads as a chained comparison that is always False);
- growth stops at `max_gaussians`, so a CPU run cannot grow without bound.
`scaled_strategy` scales the 30k-step schedule to the run's step count in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa

REFERENCE_STEPS = 30_000  # DefaultStrategy's defaults are tuned for this many steps


@dataclass
class HeadStrategy(DefaultStrategy):
    max_gaussians: int = 300_000

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        reset_every, self.reset_every = self.reset_every, 10**12  # parent must not see a reset step
        try:
            super().step_post_backward(params, optimizers, state, step, info, packed)
        finally:
            self.reset_every = reset_every
        if 0 < step < self.refine_stop_iter and step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)

    @torch.no_grad()
    def _grow_gs(self, params, optimizers, state, step):
        if len(params["means"]) >= self.max_gaussians:
            return 0, 0
        return super()._grow_gs(params, optimizers, state, step)


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
