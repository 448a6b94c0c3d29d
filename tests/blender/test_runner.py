"""facesplat_blender/runner.py without Blender: commands, following events, cancelling a process tree."""

import json
import signal
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from blender_worker import import_addon_module, process_group_members

runner = import_addon_module("runner")

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="checks process groups through /proc")


def parse(argv: list[str]):
    """The config the backend's own CLI makes of an add-on command (argv without `python -m facesplat`)."""
    from facesplat.cli import build_parser, config_from_args

    args = build_parser().parse_args(argv[3:])
    return config_from_args(args, args.command)


def test_run_command_is_an_argument_list():
    values = {"frames.num_frames": 10, "frames.height": 180, "train.num_iters": 30, "device": "cpu"}
    argv = runner.run_command("/py", workspace=Path("/w s"), output=Path("/w s/head.ply"), video=Path("/v; rm -rf x.mp4"),
                              values=values)
    assert argv == ["/py", "-m", "facesplat", "run", "--video", "/v; rm -rf x.mp4", "--output", "/w s/head.ply",
                    "--workspace", "/w s", "--num-frames", "10", "--height", "180", "--num-iters", "30",
                    "--device", "cpu"]
    assert runner.run_command("/py", workspace=Path("w"), output=Path("o"), images=Path("imgs"))[4:6] == ["--images", "imgs"]
    ellipses = runner.run_command("/py", workspace=Path("w"), output=Path("o"), video=Path("v"),
                                  values={"masks.refine": False})
    assert ellipses[-1] == "--ellipse-masks" and not parse(ellipses).masks.refine
    assert "--ellipse-masks" not in runner.run_command("/py", workspace=Path("w"), output=Path("o"), video=Path("v"),
                                                       values={"masks.refine": True})
    with pytest.raises(ValueError):
        runner.run_command("/py", workspace=Path("w"), output=Path("o"))


def test_the_panels_settings_are_the_clis_flags():
    """Every flag of `facesplat run` is a panel setting and every setting a flag: nothing the CLI
    can change is missing from the add-on, nothing the add-on sends is dropped."""
    from facesplat.config import option_schema

    assert sorted(runner.SETTINGS.values()) == sorted(o["key"] for o in option_schema("run"))


def test_default_settings_parse_to_the_clis_default_config():
    from facesplat.config import DEFAULT_PRESET, make_config
    from facesplat.core.config import get_value

    defaults = make_config(DEFAULT_PRESET)
    values = {key: get_value(defaults, key) for key in runner.SETTINGS.values()}
    argv = runner.run_command("/py", workspace=Path("w"), output=Path("o"), video=Path("v"), values=values,
                              preset=DEFAULT_PRESET)
    assert parse(argv) == parse(["/py", "-m", "facesplat", "run", "--video", "v", "--output", "o"])


def test_changed_settings_and_presets_reach_the_backends_config():
    from facesplat.config import make_config, option_schema

    # As Blender hands them over: single-precision floats, a maximum included (0.99 -> 0.99000000953...,
    # above the CLI's bound if written in full).
    top = next(o["max"] for o in option_schema("run") if o["key"] == "isolate.threshold")
    single = {"isolate.threshold": float(np.float32(top)), "isolate.min_opacity": float(np.float32(0.1))}
    values = {"frames.num_frames": 17, "frames.height": 181, "train.num_iters": 31, "train.seed": 5,
              "masks.refine": False, "device": "cpu", **single}
    exact = {**values, "isolate.threshold": top, "isolate.min_opacity": 0.1}
    argv = runner.run_command("/py", workspace=Path("w"), output=Path("o"), video=Path("v"), values=values,
                              preset="archive")
    assert parse(argv) == make_config("archive", **exact)  # the preset's hidden knobs (max_gaussians) too
    isolate = runner.isolate_command("/py", workspace=Path("/w"), output=Path("/w/head.ply"), values=values)
    assert isolate == ["/py", "-m", "facesplat", "isolate", "--workspace", "/w", "--output", "/w/head.ply",
                       "--threshold", f"{top:g}", "--min-opacity", "0.1", "--device", "cpu"]
    cfg = parse(isolate)
    assert (cfg.isolate.threshold, cfg.isolate.min_opacity, cfg.device) == (top, 0.1, "cpu")
    assert runner.format_value(float(np.float32(2.5e-3 / 20)), "float") == "0.000125"


def test_settings_values_reads_the_settings_and_replaces_the_device():
    settings = SimpleNamespace(**{name: i for i, name in enumerate(runner.SETTINGS)})
    values = runner.settings_values(settings, device="cuda")
    assert values == {key: (i if key != "device" else "cuda") for i, key in enumerate(runner.SETTINGS.values())}
    assert runner.settings_values(settings)["device"] == list(runner.SETTINGS).index("device")


def test_isolate_and_install_commands(tmp_path):
    assert runner.isolate_command("/py", workspace=Path("/w"), output=Path("/w/head.ply"),
                                  values={"isolate.threshold": 0.25, "isolate.min_opacity": 0.1}) == [
        "/py", "-m", "facesplat", "isolate", "--workspace", "/w", "--output", "/w/head.ply",
        "--threshold", "0.25", "--min-opacity", "0.1"]
    venv, pip = runner.install_commands("/blender/python", tmp_path / "env", tmp_path / "src")
    assert venv == ["/blender/python", "-m", "venv", str(tmp_path / "env")]
    assert pip[:4] == [str(runner.venv_python(tmp_path / "env")), "-m", "pip", "install"] and pip[-1] == str(tmp_path / "src")
    offline = runner.install_commands("/py", tmp_path / "env", tmp_path / "src", find_links=tmp_path / "wheels")[1]
    assert "--no-index" in offline and offline[offline.index("--find-links") + 1] == str(tmp_path / "wheels")


def fake_backend(tmp_path, body: str) -> list[str]:
    """A stand-in for `python -m facesplat` that writes events.jsonl the way the backend does."""
    script = tmp_path / "fake_backend.py"
    script.write_text(textwrap.dedent("""
        import json, os, subprocess, sys, time
        events = sys.argv[1]
        def emit(stage, progress, message=""):
            with open(events, "a") as f:
                f.write(json.dumps({"time": time.time(), "stage": stage, "progress": progress, "message": message}) + "\\n")
    """) + textwrap.dedent(body))
    return [sys.executable, str(script), str(tmp_path / "events.jsonl")]


def follow(proc, timeout=20.0):
    events, end = [], time.monotonic() + timeout
    while proc.running and time.monotonic() < end:
        events += proc.poll()
        time.sleep(0.05)
    events += proc.poll()
    return events


def test_follows_events_and_ignores_older_runs(tmp_path):
    (tmp_path / "events.jsonl").write_text(json.dumps({"stage": "done", "progress": 1.0, "message": "old"}) + "\n")
    argv = fake_backend(tmp_path, """
        emit("frames", 0.5, "half")
        emit("train", 0.25, "step 1")
        emit("done", 1.0, "wrote head.ply")
    """)
    proc = runner.BackendProcess(argv, tmp_path / "log.txt", tmp_path / "events.jsonl").start()
    events = follow(proc)
    assert [e["stage"] for e in events] == ["frames", "train", "done"]
    assert proc.succeeded and proc.finished_event()["message"] == "wrote head.ply"
    assert proc.progress_text() == "done 100%"
    proc.last_event = events[1]
    stages = runner.STAGES  # frames, faces, ..., train, ...: the count grows with the pipeline
    assert proc.progress_text() == f"train ({stages.index('train') + 1}/{len(stages)}) 25%"


def test_error_message_comes_from_the_error_event_or_the_last_line(tmp_path):
    argv = fake_backend(tmp_path, """
        emit("error", 0.0, "no face found in any frame; film the head, not the room")
        print("facesplat: error: no face found in any frame; film the head, not the room", file=sys.stderr)
        sys.exit(3)
    """)
    proc = runner.BackendProcess(argv, tmp_path / "log.txt", tmp_path / "events.jsonl").start()
    follow(proc)
    assert proc.returncode == 3 and not proc.succeeded
    assert proc.error_message() == "no face found in any frame; film the head, not the room"

    argv = fake_backend(tmp_path, """
        print("progress 10%\\r progress 20%\\r", file=sys.stderr)
        print("facesplat: error: --height 10 is too small; use 270 or more", file=sys.stderr)
        sys.exit(2)
    """)
    proc = runner.BackendProcess(argv, tmp_path / "log2.txt", None).start()
    follow(proc)
    assert proc.error_message() == "--height 10 is too small; use 270 or more"


def test_missing_interpreter_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="cannot start"):
        runner.BackendProcess([str(tmp_path / "no-python"), "-V"], tmp_path / "log.txt").start()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@posix_only
@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_cancel_stops_the_whole_process_tree(tmp_path, ignores_sigterm):
    """The child starts a grandchild; cancel must end both, even if they ignore SIGTERM."""
    argv = fake_backend(tmp_path, f"""
        import signal
        if {ignores_sigterm}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN) if {ignores_sigterm} else None; time.sleep(60)"])
        emit("frames", 0.1, f"child {{child.pid}}")
        time.sleep(60)
    """)
    proc = runner.BackendProcess(argv, tmp_path / "log.txt", tmp_path / "events.jsonl", grace_s=0.5).start()
    end = time.monotonic() + 20
    while not proc.last_event and time.monotonic() < end:
        proc.poll()
        time.sleep(0.05)
    grandchild = int(proc.last_event["message"].split()[1])
    assert set(process_group_members(proc.pid)) == {proc.pid, grandchild}
    proc.cancel()
    assert proc.wait(10) is not None
    assert proc.cancelled and not proc.succeeded
    deadline = time.monotonic() + 5
    while process_group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_group_members(proc.pid) == []
    assert not _alive(grandchild)
    assert proc.returncode == (-signal.SIGKILL if ignores_sigterm else -signal.SIGTERM)
