"""Run the FaceSplat backend as a child process and follow its progress. Blender-free.

The add-on's modal operator calls `BackendProcess.poll()` from a timer: every call is a few
small reads, so Blender stays responsive. The child runs in its own process group (session),
so Cancel stops it and everything it started. Commands are argument lists, never a shell.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from .core.config import option_schema
from .core.events import STAGES, TERMINAL_STAGES, read_events

IS_WINDOWS = sys.platform == "win32"


# The panel's run settings: Scene property name -> core.config key. Each property's default, bounds,
# choices and description come from that key's option in core.config.option_schema(), and its
# command-line flag too, so a default changed in core/config.py is one edit.
SETTINGS = {
    "num_frames": "frames.num_frames",
    "height": "frames.height",
    "num_iters": "train.num_iters",
    "seed": "train.seed",
    "silhouette_masks": "masks.refine",
    "threshold": "isolate.threshold",
    "min_opacity": "isolate.min_opacity",
    "device": "device",
}


def format_value(value, type_name: str) -> str:
    """A setting as command-line text. Floats are written as the shortest text of their single-
    precision value: Blender stores 0.3 as 0.30000001192..., and a maximum of 0.99 would otherwise
    come out above the CLI's bound 0.99."""
    if type_name == "float":
        single = struct.unpack("f", struct.pack("f", value))[0]
        return next(text for text in (f"{value:.{digits}g}" for digits in range(1, 18))
                    if struct.unpack("f", struct.pack("f", float(text)))[0] == single)
    if type_name == "int":
        return str(int(value))
    return str(value)


def option_flags(command: str, values: dict) -> list[str]:
    """The flags of `facesplat <command>` for config values given as {'section.name': value}, in the
    schema's order. Keys the command has no flag for are left out, so one set of values serves both
    `run` and `isolate`; keys not given are left to the backend's default."""
    flags = []
    for option in option_schema(command):
        if option["key"] not in values:
            continue
        value = values[option["key"]]
        if option["type"] == "bool":
            # A bool flag sets one value (False for an inverted one); the other is the default.
            if bool(value) == (not option["invert"]):
                flags.append(option["flag"])
        else:
            flags += [option["flag"], format_value(value, option["type"])]
    return flags


def settings_values(settings, device: str | None = None) -> dict:
    """{'section.name': value} from an object with the SETTINGS attributes (the Scene's FaceSplat
    settings); `device` replaces the settings' device (the preferences' choice for "PREFS")."""
    values = {key: getattr(settings, name) for name, key in SETTINGS.items()}
    if device is not None:
        values["device"] = device
    return values


def run_command(python: str, *, workspace: Path, output: Path, video: Path | None = None,
                images: Path | None = None, values: dict | None = None, preset: str | None = None) -> list[str]:
    """`facesplat run` for a video or an image folder (exactly one of them), with the preset and
    the config values ({'section.name': value}) as flags."""
    if (video is None) == (images is None):
        raise ValueError("give a video or an image folder, not both")
    source = ["--video", str(video)] if video is not None else ["--images", str(images)]
    return ([str(python), "-m", "facesplat", "run", *source, "--output", str(output), "--workspace", str(workspace)]
            + (["--preset", preset] if preset else []) + option_flags("run", values or {}))


def isolate_command(python: str, *, workspace: Path, output: Path, values: dict | None = None) -> list[str]:
    """`facesplat isolate`: re-select the head Gaussians of a finished workspace."""
    return ([str(python), "-m", "facesplat", "isolate", "--workspace", str(workspace), "--output", str(output)]
            + option_flags("isolate", values or {}))


def venv_python(env_dir: Path) -> Path:
    """The interpreter inside a virtual environment made by `python -m venv`."""
    return Path(env_dir) / ("Scripts/python.exe" if IS_WINDOWS else "bin/python")


def install_commands(base_python: str, env_dir: Path, backend_src: Path,
                     find_links: Path | None = None) -> list[list[str]]:
    """Create a dedicated environment and pip-install the bundled backend into it.

    With `find_links` pip installs offline from that folder of wheels (no index).
    """
    pip = [str(venv_python(env_dir)), "-m", "pip", "install", "--disable-pip-version-check"]
    if find_links is not None:
        pip += ["--no-index", "--find-links", str(find_links)]
    return [[str(base_python), "-m", "venv", str(env_dir)], pip + [str(backend_src)]]


def child_environment() -> dict:
    """The environment for the backend: ours, minus what would point it at Blender's Python."""
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)  # a venv interpreter with a foreign PYTHONHOME cannot start
    env["PYTHONUNBUFFERED"] = "1"  # the log file shows output as it happens
    return env


def tail_lines(path: Path, count: int, max_bytes: int = 8192) -> list[str]:
    """The last non-empty lines of a log (progress bars end lines with \\r, so split on both)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [ln.strip() for ln in tail.replace("\r", "\n").split("\n") if ln.strip()][-count:]


class BackendProcess:
    """One child command in its own process group, with its output in a log file and its
    progress in an events.jsonl file (both optional to read; neither is ever held open by us
    between polls)."""

    def __init__(self, argv: list[str], log_path: Path, events_path: Path | None = None,
                 grace_s: float = 5.0, env: dict | None = None):
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.events_path = Path(events_path) if events_path else None
        self.grace_s = grace_s
        self.env = env if env is not None else child_environment()
        self.last_event: dict | None = None
        self.proc: subprocess.Popen | None = None
        self._offset = 0
        self._cancel_deadline: float | None = None
        self._swept = False

    # lifecycle
    def start(self) -> "BackendProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.events_path is not None:
            # Events of earlier runs in the same workspace are history, not progress.
            self._offset = self.events_path.stat().st_size if self.events_path.exists() else 0
        group = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
                 if IS_WINDOWS else {"start_new_session": True})
        with open(self.log_path, "ab") as log:  # appends: a chain of commands shares one log
            try:
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, env=self.env, **group)
            except OSError as e:
                raise RuntimeError(f"cannot start {self.argv[0]}: {e.strerror or e}") from None
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def cancelled(self) -> bool:
        return self._cancel_deadline is not None

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.cancelled

    def poll(self) -> list[dict]:
        """New progress events since the last call; also escalates a pending cancel."""
        events: list[dict] = []
        if self.events_path is not None:
            try:
                if self.events_path.stat().st_size < self._offset:
                    self._offset = 0  # the backend started the file afresh
            except OSError:
                pass
            events, self._offset = read_events(self.events_path, self._offset)
            if events:
                self.last_event = events[-1]
        if self._cancel_deadline is not None and not self._swept:
            if not self.running:
                self._kill_tree(force=True)  # stragglers the backend left behind, once
                self._swept = True
            elif time.monotonic() > self._cancel_deadline:
                self._kill_tree(force=True)
        return events

    def cancel(self) -> None:
        """Ask the whole process tree to stop; poll() kills it if it is still there after grace_s."""
        if self.proc is None or self._cancel_deadline is not None:
            return
        self._cancel_deadline = time.monotonic() + self.grace_s
        self._kill_tree(force=False)

    def wait(self, timeout: float) -> int | None:
        """Poll until the process ends (and, after cancel, its group is cleared) or `timeout`."""
        end = time.monotonic() + timeout
        while self.running and time.monotonic() < end:
            self.poll()
            time.sleep(0.05)
        self.poll()
        return self.returncode

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel and wait: for unregister and quitting Blender."""
        if self.running:
            self.cancel()
            self.wait(timeout)
            if self.running:
                self._kill_tree(force=True)
                self.wait(2.0)

    def _kill_tree(self, force: bool) -> None:
        if self.proc is None:
            return
        if IS_WINDOWS:
            if force:
                subprocess.run(["taskkill", "/PID", str(self.proc.pid), "/T", "/F"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            elif self.running:
                self.proc.send_signal(signal.CTRL_BREAK_EVENT)
            return
        # The child leads its own session, so its pid is the process-group id of everything it started.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL if force else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass

    # reporting
    def progress_text(self) -> str:
        ev = self.last_event
        if not ev:
            return "starting…"
        stage = ev.get("stage", "")
        where = f" ({STAGES.index(stage) + 1}/{len(STAGES)})" if stage in STAGES else ""
        return f"{stage}{where} {round(100 * float(ev.get('progress', 0.0)))}%"

    def finished_event(self) -> dict | None:
        ev = self.last_event
        return ev if ev and ev.get("stage") in TERMINAL_STAGES else None

    def error_message(self) -> str:
        """The backend's one-line cause: its "error" event, else the last line it printed."""
        ev = self.last_event
        if ev and ev.get("stage") == "error" and ev.get("message"):
            return str(ev["message"])
        lines = tail_lines(self.log_path, 60)
        # pip ends with notes after its cause ("ERROR: No matching distribution found for ...").
        line = lines[-1] if lines else ""
        for marker in ("error: ", "ERROR: ", "facesplat: error: "):  # weakest first, strongest wins
            line = next((ln for ln in reversed(lines) if ln.startswith(marker)), line)
        for prefix in ("facesplat: error: ", "facesplat: ", "ERROR: ", "error: "):
            if line.startswith(prefix):
                return line[len(prefix):]
        return line or f"{Path(self.argv[0]).name} exited with code {self.returncode}"
