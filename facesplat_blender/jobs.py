"""The backend job and the one active job. Blender-free (the operators pass Blender's context
through, untouched, to a job's on_success).

A job is a chain of backend commands (usually one; Install Backend needs two) run one after the
other as child processes (runner.py), polled by the caller, and what to do when they all succeed.
Only one job runs at a time: `launch` refuses a second, `finish` clears it, `stop_active` ends it
(Blender quitting, loading another file, disabling the add-on).
"""

from __future__ import annotations

from pathlib import Path

from . import runner


class UserError(Exception):
    """Something the user can fix before a run starts (a missing file, no backend)."""


class BackendJob:
    """Backend commands run one after the other, and what to do when they all succeed."""

    def __init__(self, kind: str, title: str, commands: list[list[str]], log_path: Path,
                 events_path: Path | None = None, on_success=None):
        self.kind, self.title = kind, title
        self.commands, self.log_path, self.events_path = commands, log_path, events_path
        self.on_success = on_success  # callable(*success_args) -> message; may raise ValueError/OSError/UserError
        self.step = 0
        self.process: runner.BackendProcess | None = None

    def start(self) -> "BackendJob":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")
        self._start_step()
        return self

    def _start_step(self) -> None:
        self.process = runner.BackendProcess(self.commands[self.step], self.log_path, self.events_path).start()

    def cancel(self) -> None:
        if self.process is not None:
            self.process.cancel()

    def stop(self) -> None:
        """Cancel and wait for the process tree to end."""
        if self.process is not None:
            self.process.stop()

    def fraction(self) -> float:
        if self.events_path is None:  # no progress events (pip): count the commands
            return self.step / len(self.commands)
        ev = self.process.last_event if self.process else None
        return float(ev.get("progress", 0.0)) if ev else 0.0

    def message(self) -> str:
        """The backend's latest progress message ('' if none)."""
        ev = (self.process.last_event if self.process else None) or {}
        return str(ev.get("message", ""))

    def status_text(self) -> str:
        if self.process is None:
            return ""
        if self.process.cancelled:
            return "cancelling…"
        if self.events_path is None:  # pip: no events, show its output
            lines = runner.tail_lines(self.log_path, 1)
            return f"step {self.step + 1}/{len(self.commands)}: {lines[0][:60] if lines else 'starting…'}"
        return self.process.progress_text()

    def tick(self, *success_args) -> tuple[str, str]:
        """Advance; returns (state, message) with state RUNNING, FINISHED, CANCELLED or FAILED.
        On success, on_success(*success_args) runs once and its return value is the message."""
        proc = self.process
        proc.poll()
        if proc.running:
            return "RUNNING", ""
        proc.poll()  # the last events, written just before exit
        if proc.cancelled:
            return "CANCELLED", f"{self.title} cancelled"
        if proc.returncode != 0:
            return "FAILED", proc.error_message()
        if self.step + 1 < len(self.commands):
            self.step += 1
            try:
                self._start_step()
            except RuntimeError as e:  # e.g. the new environment's python is missing
                return "FAILED", str(e)
            return "RUNNING", ""
        try:
            return "FINISHED", (self.on_success(*success_args) if self.on_success else f"{self.title} finished")
        except (ValueError, OSError, UserError) as e:  # core's format errors are ValueErrors
            return "FAILED", str(e)


_active: BackendJob | None = None


def active() -> BackendJob | None:
    return _active


def launch(job: BackendJob) -> BackendJob:
    """Start `job` as the active one; UserError if another is running or it cannot start."""
    global _active
    if _active is not None:
        raise UserError(f"{_active.title} is still running; cancel it first")
    try:
        job.start()
    except (OSError, RuntimeError) as e:
        raise UserError(str(e)) from None
    _active = job
    return job


def finish() -> None:
    """Forget the active job (it has ended)."""
    global _active
    _active = None


def stop_active() -> None:
    """Stop the active job's processes, if any, and forget it."""
    global _active
    job, _active = _active, None
    if job is not None:
        job.stop()
