"""The add-on's batch.json reader (facesplat_blender/batches.py) without Blender, on files written
by the backend's own writer (facesplat.batch) and on broken or hostile ones."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from blender_worker import REPO, import_addon_module

sys.path.insert(0, str(REPO / "backend"))
from facesplat import batch  # noqa: E402
from facesplat.core.ply import Splats, write_splat_ply  # noqa: E402

batches = import_addon_module("batches")


def finished_workspace(ws: Path, gaussians: int, frames: int) -> None:
    """What a finished capture leaves that the reader and the import look at."""
    ws.mkdir(parents=True)
    n = gaussians
    write_splat_ply(ws / "head.ply", Splats(np.zeros((n, 3)), np.zeros((n, 3)), np.zeros((n, 3, 3)), np.zeros(n),
                                            np.zeros((n, 3)), np.tile([1.0, 0, 0, 0], (n, 1))))
    (ws / "cameras.json").write_text("{}")
    (ws / "report.json").write_text(json.dumps({
        "frames_registered": frames, "frames_sampled": 12, "gaussians_after_isolation": gaussians,
        "psnr_in_mask_db": 21.34, "stage_seconds": {"frames": 1.5, "train": 40.0}}))


def write_batch(output_dir: Path) -> None:
    """batch.json as `facesplat batch` writes it: one done, one failed, one pending capture."""
    source = output_dir.parent / "captures"
    done = batch.Capture("bust_001", source / "bust_001.mp4", False)
    failed = batch.Capture("notes", source / "notes.txt", False)
    pending = batch.Capture("bust_002", source / "bust_002.mp4", False)
    finished_workspace(done.workspace(output_dir), 4100, 10)
    done.head_ply(output_dir).write_bytes((done.workspace(output_dir) / "head.ply").read_bytes())
    results = {
        "bust_001": batch._result(done, output_dir, "done", wall_seconds=41.0),
        "notes": batch._result(failed, output_dir, "failed", cause="notes.txt is not a video (no frames); choose "
                                                                   "a video file"),
        "bust_002": batch._result(pending, output_dir, "pending"),
    }
    batch._write_tables(output_dir, source, results)


@pytest.fixture
def batch_dir(tmp_path):
    write_batch(tmp_path / "collection")
    return tmp_path / "collection"


def test_lists_every_capture_with_its_status_figures_and_workspace(batch_dir):
    captures = batches.read_batch(batch_dir)
    assert [(c.name, c.status) for c in captures] == [("bust_001", "done"), ("notes", "failed"),
                                                      ("bust_002", "pending")]
    done, failed, pending = captures
    assert (done.gaussians, done.frames_registered, done.frames_sampled, done.seconds) == (4100, 10, 12, 41.5)
    assert done.figures == "4100 Gaussians · 10/12 frames · PSNR 21.3 dB · 42 s"
    assert done.workspace == batch_dir / "bust_001" / "workspace"
    assert done.why_not_importable() == ""
    assert failed.cause.startswith("notes.txt is not a video") and failed.figures == ""
    assert failed.why_not_importable() == (f"capture notes failed: {failed.cause}; fix it and run the same batch "
                                           "again")
    assert "wait until the batch has finished it" in pending.why_not_importable()
    assert batches.find_capture(batch_dir, "notes") == failed
    with pytest.raises(ValueError, match="no capture named 'nobody'"):
        batches.find_capture(batch_dir, "nobody")


def test_a_batch_folder_moved_elsewhere_still_finds_its_workspaces(batch_dir, tmp_path):
    """batch.json holds absolute paths (the cluster's shared folder); read from another mount
    point, they are taken relative to the folder the file is in."""
    moved = tmp_path / "elsewhere" / "collection copy"
    moved.parent.mkdir()
    batch_dir.rename(moved)
    done = batches.read_batch(moved)[0]
    assert done.workspace == moved / "bust_001" / "workspace" and done.why_not_importable() == ""
    doc = json.loads((moved / "batch.json").read_text())
    doc["captures"][0]["workspace"] = "bust_001/workspace"  # a relative path: from the batch folder
    (moved / "batch.json").write_text(json.dumps(doc))
    assert batches.read_batch(moved)[0].workspace == moved / "bust_001" / "workspace"


def test_a_done_capture_whose_files_are_gone_is_not_importable(batch_dir):
    (batch_dir / "bust_001" / "workspace" / "cameras.json").unlink()
    why = batches.read_batch(batch_dir)[0].why_not_importable()
    assert "cameras.json is missing" in why and "run the same batch again" in why


def edit(batch_dir: Path, change) -> None:
    doc = json.loads((batch_dir / "batch.json").read_text())
    change(doc)
    (batch_dir / "batch.json").write_text(json.dumps(doc))


def first(**fields):
    return lambda doc: doc["captures"][0].update(fields)


HOSTILE = {
    "not JSON": (b"{\"captures\": [", "not a FaceSplat batch.json (Expecting value"),
    "not UTF-8": (b"\xff\xfe{}", "not a FaceSplat batch.json ('utf-8' codec can't decode"),
    "a list": (b"[1, 2]", "no 'captures' list"),
    "captures not a list": (b'{"captures": {"a": 1}}', "no 'captures' list"),
    "nested deeply": (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    "NaN": (b'{"captures": [{"name": "a", "status": "done", "seconds": NaN}]}', "NaN is not a number"),
    "entry not an object": (b'{"captures": ["a"]}', "capture 1: not an object"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_broken_file_gives_one_line(batch_dir, case):
    content, expected = HOSTILE[case]
    (batch_dir / "batch.json").write_bytes(content)
    with pytest.raises(ValueError) as err:
        batches.read_batch(batch_dir)
    message = str(err.value)
    assert expected in message and "\n" not in message and str(batch_dir / "batch.json") in message, message
    assert message.endswith("choose the --output-dir of a 'facesplat batch' run")


ENTRIES = {
    "name with a slash": (first(name="../../etc"), "name '../../etc' is not a folder name"),
    "empty name": (first(name=""), "name '' is not a folder name"),
    "name not text": (first(name=7), "name '7' is not a folder name"),
    "unknown status": (first(status="hacked"), "status 'hacked' is not one of done, failed"),
    "count not a number": (first(gaussians="4100"), "gaussians '4100' is not a count"),
    "negative count": (first(frames_registered=-1), "frames_registered -1 is not a count"),
    "bool as count": (first(gaussians=True), "gaussians True is not a count"),
    "cause not text": (first(cause=["x"]), "cause is not text"),
    "workspace elsewhere": (first(workspace="/etc"), "workspace '/etc' is outside the batch folder"),
    "workspace climbing out": (first(workspace="bust_001/../../../x"), "is outside the batch folder"),
    "workspace with NUL": (first(workspace="a\0b"), "workspace is not a path"),
    "two of one name": (lambda doc: doc["captures"][1].update(name="bust_001"), "two captures are named 'bust_001'"),
}


@pytest.mark.parametrize("case", sorted(ENTRIES))
def test_a_hostile_entry_gives_one_line(batch_dir, case):
    change, expected = ENTRIES[case]
    edit(batch_dir, change)
    with pytest.raises(ValueError) as err:
        batches.read_batch(batch_dir)
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_huge_file_is_refused_before_it_is_read(batch_dir):
    with open(batch_dir / "batch.json", "ab") as f:
        f.truncate(batches.MAX_BYTES + 1)
    with pytest.raises(ValueError, match="far too big"):
        batches.read_batch(batch_dir)


def test_a_folder_without_batch_json(tmp_path):
    with pytest.raises(ValueError, match=r"no batch.json in .*; choose the --output-dir of a 'facesplat batch' run"):
        batches.read_batch(tmp_path)
