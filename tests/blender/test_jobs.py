"""The add-on's Blender-free modules without Blender: jobs (the backend job, the active job),
isolations (a workspace's kept isolations), and the module graph (no import cycle)."""

import ast
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from blender_worker import REPO, import_addon_module

jobs = import_addon_module("jobs")
isolations = import_addon_module("isolations")

ADDON = REPO / "facesplat_blender"


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def run_to_end(job, *success_args, timeout=30.0):
    state, message, end = "RUNNING", "", time.monotonic() + timeout
    while state == "RUNNING" and time.monotonic() < end:
        time.sleep(0.05)
        state, message = job.tick(*success_args)
    return state, message


@pytest.fixture(autouse=True)
def no_active_job():
    jobs.stop_active()
    yield
    jobs.stop_active()


def test_a_chain_runs_in_order_then_on_success_gets_the_callers_arguments(tmp_path):
    out = tmp_path / "order.txt"
    steps = [python(f"open({str(out)!r}, 'a').write('{i}')") for i in range(3)]
    job = jobs.launch(jobs.BackendJob("t", "Test", steps, tmp_path / "log.txt",
                                      on_success=lambda ctx: f"done with {ctx}"))
    assert jobs.active() is job
    assert run_to_end(job, "the context") == ("FINISHED", "done with the context")
    assert out.read_text() == "012" and job.fraction() == 2 / 3
    jobs.finish()
    assert jobs.active() is None


def test_only_one_job_at_a_time(tmp_path):
    sleeper = jobs.launch(jobs.BackendJob("t", "Sleeper", [python("import time; time.sleep(30)")], tmp_path / "a.log"))
    with pytest.raises(jobs.UserError, match="Sleeper is still running"):
        jobs.launch(jobs.BackendJob("t", "Second", [python("pass")], tmp_path / "b.log"))
    pid = sleeper.process.pid
    jobs.stop_active()  # what quitting Blender or loading a file does
    assert jobs.active() is None and not sleeper.process.running
    with pytest.raises(ProcessLookupError):
        import os
        os.kill(pid, 0)


def test_a_failing_step_stops_the_chain_with_its_cause(tmp_path):
    marker = tmp_path / "never.txt"
    steps = [python("import sys; print('ERROR: No matching distribution found for torch'); sys.exit(1)"),
             python(f"open({str(marker)!r}, 'w')")]
    job = jobs.launch(jobs.BackendJob("t", "Install", steps, tmp_path / "log.txt"))
    assert run_to_end(job) == ("FAILED", "No matching distribution found for torch")
    assert not marker.exists()


@pytest.mark.parametrize("error", [ValueError("head.ply: 3 rows have non-finite values"), OSError("disk full"),
                                   jobs.UserError("the head was deleted")])
def test_an_import_error_after_success_is_a_failure_with_its_message(tmp_path, error):
    def on_success():
        raise error

    job = jobs.launch(jobs.BackendJob("t", "Run", [python("pass")], tmp_path / "log.txt", on_success=on_success))
    assert run_to_end(job) == ("FAILED", str(error))


def test_a_job_that_cannot_start_is_a_user_error(tmp_path):
    with pytest.raises(jobs.UserError, match="cannot start"):
        jobs.launch(jobs.BackendJob("t", "Run", [[str(tmp_path / "no-python"), "-V"]], tmp_path / "log.txt"))
    assert jobs.active() is None


def test_kept_isolations_are_listed_by_setting(tmp_path):
    ws = tmp_path / "ws"
    assert isolations.kept_isolations(ws) == [] and isolations.kept_isolations("") == []
    (ws / "isolations").mkdir(parents=True)
    for name in ["head_t0.60_o0.05.ply", "head_t0.30_o0.10.ply", "head_t0.30_o0.05.ply",
                 "head_tabc_o0.05.ply", "head_t0.30_o0.05.ply.tmp", "notes.txt", "scene.ply"]:
        (ws / "isolations" / name).write_bytes(b"ply\n")
    (ws / "isolations" / "head_t0.90_o0.05.ply").mkdir()  # not a file
    kept = isolations.kept_isolations(ws)
    assert [(k.path.name, k.threshold, k.min_opacity) for k in kept] == [
        ("head_t0.30_o0.05.ply", 0.30, 0.05), ("head_t0.30_o0.10.ply", 0.30, 0.10), ("head_t0.60_o0.05.ply", 0.60, 0.05)]
    assert kept[0].label == "Threshold 0.30 · Min Opacity 0.05"
    # the contract's name for a setting is the one listed back
    assert isolations.isolation_path(ws, 0.3, 0.05) == kept[0].path
    assert isolations.isolation_path(ws, 0.6000001, 0.05) == kept[2].path


BLENDER_FREE = ["jobs", "runner", "isolations", "exporter"]


@pytest.mark.parametrize("module", BLENDER_FREE)
def test_blender_free_modules_import_without_blender(module):
    code = f"""
        import sys, types
        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("bpy", "mathutils", "bpy_extras", "gpu"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Blocked())
        package = types.ModuleType("facesplat_blender")
        package.__path__ = [{str(ADDON)!r}]
        sys.modules["facesplat_blender"] = package
        import facesplat_blender.{module}
        print("ok")
    """
    import_addon_module("runner")  # refreshes facesplat_blender/core
    result = subprocess.run(python(code), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def _relative_imports(path: Path) -> set[str]:
    """Sibling add-on modules `path` imports (`from . import x`, `from .x import y`), anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names |= {alias.name for alias in node.names}
    return names - {"core"}


def test_the_addon_modules_have_no_import_cycle():
    graph = {p.stem: _relative_imports(p) for p in ADDON.glob("*.py") if p.stem != "__init__"}
    assert "operators" not in graph["preferences"]  # the cycle issue 10 found
    done, path = set(), []

    def visit(module):
        assert module not in path, "import cycle: " + " -> ".join(path[path.index(module):] + [module])
        if module in done or module not in graph:
            return
        path.append(module)
        for dep in sorted(graph[module]):
            visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert graph["jobs"] <= {"runner"}, graph["jobs"]
