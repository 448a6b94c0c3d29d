"""Progress events: the contract between the backend and its readers (the Blender add-on).

`events.jsonl` in the workspace holds one JSON object per line:
    {"time": <unix seconds>, "stage": <str>, "progress": <0..1>, "message": <str>}
A run ends with a line whose stage is "done" or "error" (the error's message is the one-line
cause and advice the CLI prints).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

STAGES = ("frames", "faces", "sfm", "masks", "train", "isolate")  # in pipeline order
TERMINAL_STAGES = ("done", "error")


class EventWriter:
    """Appends events to a JSON-lines file; each line is written and flushed whole."""

    def __init__(self, path, echo=None):
        self.path = Path(path)
        self.echo = echo  # optional callable(event dict), e.g. a progress bar

    def emit(self, stage: str, progress: float = 0.0, message: str = "", **extra) -> dict:
        event = {"time": round(time.time(), 3), "stage": stage,
                 "progress": float(min(1.0, max(0.0, progress))), "message": message, **extra}
        line = (json.dumps(event) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND with one write() per line: a reader never sees half a line from us.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                if os.write(fd, line) != len(line):  # a full disk can take part of a line: none then
                    os.ftruncate(fd, start)
            finally:
                os.close(fd)
        except OSError:
            pass  # progress is not worth failing the run for (a full disk): the CLI still says why
        if self.echo is not None:
            self.echo(event)
        return event


def read_events(path, offset: int = 0):
    """Read complete lines after byte `offset`. Returns (events, new_offset).

    A trailing partial line is left for the next call; malformed lines are skipped.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    events = []
    for raw in data[: end + 1].splitlines():
        try:
            ev = json.loads(raw)
        except ValueError:
            continue
        if isinstance(ev, dict) and "stage" in ev:
            events.append(ev)
    return events, offset + end + 1
