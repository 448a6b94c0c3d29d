"""Ctrl-C and SIGTERM (Cancel in Blender, `facesplat batch` stopping its runs) as one clean,
resumable stop.

The handler raises KeyboardInterrupt wherever the main thread is. Where that is a Python callback
called from C, the interrupt is lost: llvmlite's object-cache hook, which runs while numba compiles
the CPU kernels at the start of training, prints "Exception ignored on calling ctypes callback
function ... KeyboardInterrupt" and training goes on, or numba fails later ("no compiled object
yet"). So the handler also remembers the request: every progress event (`StageContext.emit`)
raises it again, and an error that follows it is taken as the interrupt's consequence
(`pipeline.stage_errors`).
"""

from __future__ import annotations

import signal
import sys

_requested = False


def install() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt. SIGINT too, since Python leaves it ignored
    when started so (a script's background job), and SIGINT is how `facesplat batch` cancels."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    sys.unraisablehook = _quiet_about_swallowed_interrupts


def _quiet_about_swallowed_interrupts(unraisable, _default=sys.unraisablehook):
    """No traceback for an interrupt Python had to drop: it is re-raised, and the user said stop."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        _default(unraisable)


def _on_signal(signum, frame):
    global _requested
    _requested = True
    raise KeyboardInterrupt


def requested() -> bool:
    return _requested


def raise_if_requested() -> None:
    """Raise the interrupt again if one was asked for (it may have been swallowed)."""
    if _requested:
        raise KeyboardInterrupt
