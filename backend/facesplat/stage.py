"""What every stage function receives besides its inputs and its config: `stage(inputs, cfg, ctx)`."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import interrupt
from .core.events import TERMINAL_STAGES, EventWriter


@dataclass
class StageContext:
    """Progress, the compute device and cancellation: the run's context, not its data."""

    events: EventWriter | None = None
    device: object = "cpu"  # torch.device; the rasterizer backend follows from it
    cancel_hooks: list = field(default_factory=list)  # a stage may register callables that stop its work

    def emit(self, stage: str, progress: float, message: str, **extra) -> None:
        if stage not in TERMINAL_STAGES:
            interrupt.raise_if_requested()  # a Ctrl-C that landed in a C callback and was swallowed
        if self.events is not None:
            self.events.emit(stage, progress, message, **extra)
