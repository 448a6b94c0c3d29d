"""`facesplat batch` through the real CLI on a local Ray instance with 2 CPUs: a bad capture fails
alone, batch.json/.csv say so, a re-run does no work for the finished captures, Ctrl-C leaves
resumable workspaces, and no Ray process outlives the command."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, run_cli

pytest.importorskip("ray")

TINY = ["--height", "180", "--num-iters", "50", "--num-frames", "12", "--device", "cpu"]


def processes_in_session(sid: int) -> list[str]:
    """Command lines of the live processes of session `sid` (Ray's servers and workers stay in the
    session of the command that started them)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except (OSError, IndexError, ValueError):
            pass
    return found


class Batch:
    """`python -m facesplat batch ...` in its own session, so that every process it starts can be
    found afterwards (and killed if the test fails half way)."""

    def __init__(self, *args):
        env = {**os.environ, "PYTHONPATH": str(REPO / "backend")}
        self.proc = subprocess.Popen([sys.executable, "-m", "facesplat", "batch", *map(str, args)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def finish(self, timeout=600):
        try:
            out, err = self.proc.communicate(timeout=timeout)
            deadline = time.time() + 15
            while processes_in_session(self.proc.pid) and time.time() < deadline:
                time.sleep(0.25)
            left = processes_in_session(self.proc.pid)
            assert not left, f"processes outlived facesplat batch: {left}"
            return self.proc.returncode, err.replace("\r", "\n")
        finally:
            if processes_in_session(self.proc.pid):
                os.killpg(self.proc.pid, signal.SIGKILL)


def stage_files(ws: Path) -> dict[str, int]:
    """mtime of every stage marker, head.ply and the size of events.jsonl: what a run would touch."""
    files = sorted((ws / "stages").glob("*.done.json")) + [ws / "head.ply", ws.parent / "head.ply"]
    return {**{str(p): p.stat().st_mtime_ns for p in files}, "events": (ws / "events.jsonl").stat().st_size}


def test_batch_two_done_one_failed_then_rerun_skips_the_finished(tmp_path, capture_dir):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    for name in ("lps_a", "lps_b"):
        shutil.copy(capture_dir / "video.mp4", inputs / f"{name}.mp4")
    (inputs / "notes.txt").write_text("not a video\n")

    code, err = Batch(inputs, "--output-dir", out, "--num-cpus", "2", *TINY).finish()
    assert code == 3, err[-3000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(("done ", "failed "))]
    assert sorted(line.split(":")[0].split()[1] for line in lines) == ["lps_a", "lps_b", "notes"]
    assert any(line.startswith("failed  notes: cannot read") and "as a video" in line for line in lines), lines
    assert err.strip().splitlines()[-1].startswith("facesplat: error: 1 of 3 captures failed (first: notes:")

    with open(out / "batch.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["lps_a", "lps_b", "notes"]  # the folder's order
    for name in ("lps_a", "lps_b"):
        row, ws = rows[name], out / name / "workspace"
        report = json.loads((ws / "report.json").read_text())
        assert row["status"] == "done" and row["cause"] == ""
        assert row["head_ply"] == str(out / name / "head.ply")
        assert (out / name / "head.ply").read_bytes() == (ws / "head.ply").read_bytes()
        assert row["workspace"] == str(ws) and row["input"] == str(inputs / f"{name}.mp4")
        assert int(row["frames_registered"]) == report["frames_registered"] >= 3
        assert int(row["frames_sampled"]) == 12
        assert int(row["gaussians"]) == report["gaussians_after_isolation"] > 0
        assert float(row["psnr_in_mask_db"]) == pytest.approx(report["psnr_in_mask_db"])
        assert float(row["seconds"]) == pytest.approx(sum(report["stage_seconds"].values()), abs=0.1)
    assert rows["notes"]["status"] == "failed" and rows["notes"]["head_ply"] == ""
    assert rows["notes"]["cause"].startswith(f"cannot read {inputs / 'notes.txt'} as a video")
    summary = json.loads((out / "batch.json").read_text())
    assert (summary["captures_total"], summary["done"], summary["failed"]) == (3, 2, 1)
    assert [c["status"] for c in summary["captures"]] == ["done", "done", "failed"]

    before = {name: stage_files(out / name / "workspace") for name in ("lps_a", "lps_b")}
    assert all(len(files) == 6 + 2 + 1 for files in before.values())
    code, err = Batch(inputs, "--output-dir", out, "--num-cpus", "2", *TINY).finish()
    assert code == 3, err[-3000:]
    assert {name: stage_files(out / name / "workspace") for name in ("lps_a", "lps_b")} == before  # no work
    assert "done    lps_a: already finished, skipped" in err and "done    lps_b: already finished, skipped" in err
    assert "running 1 captures" in err
    assert (out / "notes" / "run.log").read_text().count("=== ") == 2  # the failed one was tried again
    assert [c["skipped"] for c in json.loads((out / "batch.json").read_text())["captures"]] == [True, True, False]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_every_capture_and_leaves_resumable_workspaces(tmp_path, capture_dir, signum):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(capture_dir / "video.mp4", inputs / "lps.mp4")
    # Long enough that the capture is still running when the interrupt has gone round: at TINY's 50
    # steps it finishes some 8 s after its faces stage, and on a loaded machine it once did so first.
    long_run = [a if a != "50" else "3000" for a in TINY]
    batch = Batch(inputs, "--output-dir", out, "--num-cpus", "2", *long_run)
    faces_done = out / "lps" / "workspace" / "stages" / "faces.done.json"
    deadline = time.time() + 300
    while not faces_done.exists() and batch.proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert faces_done.exists(), "the capture did not get past the faces stage"
    started = time.time()
    batch.proc.send_signal(signum)
    code, err = batch.finish()
    assert code == 130, err[-3000:]
    assert time.time() - started < 60
    assert "Traceback" not in err
    assert "run the same batch again to resume" in err.strip().splitlines()[-1]
    capture = json.loads((out / "batch.json").read_text())["captures"][0]
    assert capture["status"] == "interrupted" and not (out / "lps" / "head.ply").exists()
    checked = run_cli("check", "--workspace", out / "lps" / "workspace", timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # consistent: a re-run resumes it
    assert "faces: done" in checked.stdout and "a run resumes at:" in checked.stdout
    assert "interrupted" in (out / "lps" / "run.log").read_text().strip().splitlines()[-1]


def test_manifest_gives_each_capture_its_name_kind_and_options(tmp_path):
    from facesplat.batch import configure, list_captures, run_argv

    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "photos").mkdir()
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,name,num-iters,--ellipse-masks\na.mp4,,,\nphotos,bust_2,20,yes\n")
    captures = list_captures(manifest, tmp_path / "out")
    configure(captures, "standard", {"train.num_iters": 50, "frames.height": 180})
    assert [(c.name, c.source, c.is_images) for c in captures] == [
        ("a", tmp_path / "a.mp4", False), ("bust_2", tmp_path / "photos", True)]
    assert (captures[0].cfg.train.num_iters, captures[1].cfg.train.num_iters) == (50, 20)
    assert (captures[0].cfg.masks.refine, captures[1].cfg.masks.refine) == (True, False)
    argv = run_argv(captures[1], tmp_path / "out", "standard")
    assert argv[:7] == ["run", "--images", str(tmp_path / "photos"), "--output", str(tmp_path / "out/bust_2/head.ply"),
                        "--workspace", str(tmp_path / "out/bust_2/workspace")]
    assert "--ellipse-masks" in argv and argv[argv.index("--num-iters") + 1] == "20"
    assert argv[argv.index("--height") + 1] == "180"
    assert "--ellipse-masks" not in run_argv(captures[0], tmp_path / "out", "standard")


@pytest.mark.parametrize("manifest, message", [
    ("path,name,iters\na.mp4,a,3\n", "unknown column 'iters'"),
    ("path,name,num-iters\na.mp4,a,0\n", "capture a: --num-iters 0 is outside 1..100000"),
    ("path,name,num-iters\na.mp4,a,many\n", "line 2 of the manifest: num-iters 'many' is not a number"),
    ("path,name\na.mp4,x\na.mp4,x\n", "two captures are named 'x'"),
    ("name\nx\n", "has no 'path' column"),
])
def test_bad_manifest_is_one_line_exit_2_before_ray_starts(tmp_path, manifest, message):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "list.csv").write_text(manifest)
    result = run_cli("batch", tmp_path / "list.csv", "--output-dir", tmp_path / "out", timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("facesplat: error: ") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_output_dir_may_not_be_the_folder_of_captures(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    result = run_cli("batch", tmp_path, "--output-dir", tmp_path, timeout=120)
    assert result.returncode == 2 and "is the folder of captures itself" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


def test_without_ray_batch_says_how_to_install_it(tmp_path):
    """cli.py never imports Ray for the other commands; `batch` without it is one line, exit 2."""
    code = ("import sys\nfrom facesplat import cli\ncli.build_parser()\nassert 'ray' not in sys.modules\n"
            "sys.modules['ray'] = None\n"  # what `import ray` meets when Ray is not installed
            f"sys.exit(cli.main(['batch', {str(tmp_path)!r}, '--output-dir', {str(tmp_path / 'out')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO / "backend")})
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "facesplat batch needs Ray" in result.stderr and "pip install 'ray==2.60.0'" in result.stderr
    assert "ray==2.60.0" in (REPO / "requirements.txt").read_text()


def test_address_joins_a_running_cluster_and_leaves_it_running(tmp_path):
    """`ray start --head` as an administrator would (token authentication, Ray's default); the
    batch joins it with --address, and a wrong address fails at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO / "backend"), "RAY_AUTH_MODE": "token"}
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--port", str(port),
                             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", "--block"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        inputs = tmp_path / "inputs"
        (inputs / "no_photos").mkdir(parents=True)
        for _ in range(60):  # the head takes a few seconds to listen
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        result = subprocess.run([sys.executable, "-m", "facesplat", "batch", inputs, "--output-dir", tmp_path / "out",
                                 "--address", f"127.0.0.1:{port}", "--device", "cpu"],
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 3, result.stderr[-3000:]
        assert "(1 node(s), 2 CPUs, 0 GPUs)" in result.stderr
        row = json.loads((tmp_path / "out" / "batch.json").read_text())["captures"][0]
        assert row["status"] == "failed" and row["cause"].startswith("no photos")
        assert head.poll() is None  # joining left the cluster running

        wrong = run_cli("batch", inputs, "--output-dir", tmp_path / "out2", "--address", "127.0.0.1:1", timeout=120)
        assert wrong.returncode == 2 and "nothing answers at --address 127.0.0.1:1" in wrong.stderr, wrong.stderr
        assert not (tmp_path / "out2" / "batch.json").exists()
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` drains and stops its processes
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.time() + 15
        while processes_in_session(head.pid) and time.time() < deadline:
            time.sleep(0.25)
        left = processes_in_session(head.pid)
        if left:
            os.killpg(head.pid, signal.SIGKILL)
        assert not left, f"the test cluster's processes outlived it: {left}"
