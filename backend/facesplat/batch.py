"""`facesplat batch`: many captures, each the normal pipeline in its own workspace, as Ray tasks.

    DIR/<name>/workspace    the capture's workspace (resumable like any `facesplat run` workspace)
    DIR/<name>/head.ply     its isolated head
    DIR/<name>/run.log      what its `facesplat run` printed (appended by every batch run)
    DIR/batch.json, .csv    every capture: status, one-line cause, figures from its report.json

A capture is one Ray task, and the task runs `python -m facesplat run ...` as its child process:
a crash of the pipeline (COLMAP aborts the process on some errors) fails that capture only, and
Ctrl-C / `ray.cancel` reaches the child as SIGINT: `facesplat run` finishes its current atomic
write and keeps every finished stage. (Not SIGTERM: pycolmap's glog handler catches SIGTERM and
aborts the process with a stack trace.) The child also gets SIGINT when its Ray worker dies
(PR_SET_PDEATHSIG), so no orphan keeps a workspace locked.

A capture whose head.ply exists and whose stage markers all match its settings is finished: a
re-run reports it from its report.json without starting a task. Everything else (failed,
interrupted, new) runs, and `facesplat run` resumes it from its first unfinished stage.

Ray is imported only when the command runs (`pip install 'facesplat[batch]'`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import DEFAULT_PRESET, PRESETS, ConfigError, make_config, option_schema, validate
from .core.files import atomic_write_bytes
from .errors import InputError, StageError
from .workspace import Workspace

RAY_REQUIREMENT = "ray==2.60.0"  # the version requirements.txt pins (checked with numpy<2, Python 3.11)
STOP_SECONDS = 60  # how long a cancelled capture may take to stop cleanly before it is killed
CSV_COLUMNS = ("name", "status", "cause", "frames_registered", "frames_sampled", "gaussians", "psnr_in_mask_db",
               "seconds", "head_ply", "workspace", "log", "input")


def add_batch_parser(sub, add_options) -> None:
    """The `batch` subcommand; `add_options` is cli.py's generator of the run flags."""
    batch = sub.add_parser(
        "batch", help="run many captures (a folder or a CSV manifest), each in its own workspace, as Ray tasks")
    batch.add_argument("inputs", type=Path, metavar="INPUTS",
                       help="a folder (each video file and each folder of photos in it is one capture) or a CSV "
                            "manifest with a header: path, optional name, optional run-flag columns such as "
                            "num-iters (an empty cell keeps the batch's value)")
    batch.add_argument("--output-dir", type=Path, required=True,
                       help="where each capture gets <name>/workspace and <name>/head.ply, and batch.json/.csv")
    batch.add_argument("--address", help="join this running Ray cluster (e.g. auto, or ray://head:10001) "
                                         "instead of starting a local Ray instance")
    batch.add_argument("--num-cpus", type=int, metavar="N",
                       help="CPUs the local Ray instance offers (default: all of this machine's); not with --address")
    batch.add_argument("--num-cpus-per-capture", type=float, default=1.0, metavar="N",
                       help="CPUs Ray reserves for each capture (default %(default)s)")
    batch.add_argument("--num-gpus-per-capture", type=float, metavar="N",
                       help="GPUs Ray reserves for each capture (default: 1 when the cluster has GPUs and "
                            "--device is not cpu, else 0)")
    batch.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                       help="starting settings of every capture, as for 'facesplat run' (default %(default)s)")
    add_options(batch, "run")


# --- the captures: from a folder or a manifest ----------------------------------------------------

@dataclass
class Capture:
    name: str
    source: Path
    is_images: bool
    options: dict = field(default_factory=dict)  # {'section.name': value}: the batch's flags, then the row's
    cfg: object = None  # the validated Config those give

    def folder(self, output_dir: Path) -> Path:
        return output_dir / self.name

    def workspace(self, output_dir: Path) -> Path:
        return self.folder(output_dir) / "workspace"

    def head_ply(self, output_dir: Path) -> Path:
        return self.folder(output_dir) / "head.ply"

    def log(self, output_dir: Path) -> Path:
        return self.folder(output_dir) / "run.log"


def list_captures(inputs: Path, output_dir: Path) -> list[Capture]:
    if not inputs.exists():
        raise InputError(f"{inputs} does not exist; give a folder of captures or a CSV manifest")
    if inputs.is_dir():
        if inputs.resolve() == output_dir.resolve():
            raise InputError(f"--output-dir {output_dir} is the folder of captures itself (its capture folders would "
                             "become captures); choose another folder, e.g. a new sub-folder")
        captures = _folder_captures(inputs, output_dir)
    elif inputs.suffix.lower() == ".csv":
        captures = _manifest_captures(inputs)
    else:
        raise InputError(f"{inputs} is neither a folder nor a .csv manifest; give a folder of videos and photo "
                         "folders, or a CSV manifest with a 'path' column")
    if not captures:
        raise InputError(f"no captures in {inputs}; put videos or folders of photos in it")
    seen = {}
    for c in captures:
        if c.name in ("batch.json", "batch.csv"):
            raise InputError(f"the capture {c.source} would be named {c.name}, the name of the batch's table; rename "
                             "it (or give it a 'name' in a manifest)")
        if c.name in seen:
            raise InputError(f"two captures are named {c.name!r} ({seen[c.name]} and {c.source}); give them "
                             "distinct names (a manifest's 'name' column)")
        seen[c.name] = c.source
    return captures


def _folder_captures(folder: Path, output_dir: Path) -> list[Capture]:
    """Every visible file (a video) and folder (photos) of `folder`: a stray file is not skipped
    silently, it becomes a failed capture that says what is wrong with it."""
    captures = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.resolve() == output_dir.resolve():
            continue
        captures.append(Capture(entry.stem if entry.is_file() else entry.name, entry.resolve(), entry.is_dir()))
    return captures


def _manifest_captures(manifest: Path) -> list[Capture]:
    try:
        rows = list(csv.DictReader(io.StringIO(manifest.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"cannot read the manifest {manifest} ({err}); save it as a UTF-8 CSV file") from None
    columns = [c.strip() for c in (rows[0].keys() if rows else [])]
    if "path" not in columns:
        raise InputError(f"the manifest {manifest} has no 'path' column; its first line must name the columns, "
                         "e.g. path,name,num-iters")
    options = {o["flag"].lstrip("-"): o for o in option_schema("run")}
    unknown = [c for c in columns if c not in ("path", "name") and c.lstrip("-") not in options]
    if unknown:
        raise InputError(f"the manifest {manifest} has an unknown column {unknown[0]!r}; columns are path, name and "
                         f"run flags: {', '.join(options)}")
    captures = []
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row.get("path"):
            raise InputError(f"line {line} of the manifest {manifest} has no path; fill it in or delete the line")
        source = (manifest.parent / row["path"]).resolve()  # relative paths: from the manifest's folder
        name = row.get("name") or source.stem
        if "/" in name or "\\" in name or name in (".", ".."):
            raise InputError(f"line {line} of the manifest: name {name!r} is not a folder name; use letters, "
                             "digits, '-' and '_'")
        overrides = {}
        for column, cell in row.items():
            option = options.get(column.lstrip("-"))
            if option is None or cell == "":
                continue
            try:
                overrides[option["key"]] = _cell_value(option, cell)
            except ValueError:
                raise InputError(f"line {line} of the manifest: {column} {cell!r} is not "
                                 f"{'a number' if option['type'] != 'bool' else 'yes or no'}") from None
        captures.append(Capture(name, source, source.is_dir(), overrides))
    return captures


def _cell_value(option: dict, cell: str):
    if option["type"] == "bool":
        if cell.lower() not in ("1", "yes", "true", "x", "0", "no", "false"):
            raise ValueError(cell)
        return (not option["invert"]) if cell.lower() in ("1", "yes", "true", "x") else option["invert"]
    return {"int": int, "float": float, "str": str}[option["type"]](cell)


def configure(captures: list[Capture], preset: str, batch_options: dict) -> None:
    """Each capture's Config: the preset, the batch's flags, then its manifest row (checked now,
    before any task starts)."""
    for c in captures:
        c.options = {**batch_options, **c.options}
        try:
            c.cfg = validate(make_config(preset, **c.options))
        except ConfigError as err:
            raise InputError(f"capture {c.name}: {err}") from None


def run_argv(c: Capture, output_dir: Path, preset: str) -> list[str]:
    """The `facesplat run` command line of a capture."""
    argv = ["run", "--images" if c.is_images else "--video", str(c.source), "--output", str(c.head_ply(output_dir)),
            "--workspace", str(c.workspace(output_dir)), "--preset", preset]
    for option in option_schema("run"):
        if option["key"] not in c.options:
            continue
        value = c.options[option["key"]]
        if option["type"] == "bool":
            argv += [option["flag"]] if value == (not option["invert"]) else []
        else:
            argv += [option["flag"], str(value)]
    return argv


def is_finished(c: Capture, output_dir: Path) -> bool:
    """head.ply is there and every stage's marker matches the capture's settings: the test
    `pipeline.run_stages` makes before it skips a stage, made here for all of them."""
    from .pipeline import Run, stage_chain
    from .stage import StageContext

    ws = Workspace(c.workspace(output_dir))
    if not c.head_ply(output_dir).is_file() or not ws.is_ours():
        return False
    run = Run(ws, c.cfg, StageContext(), c.source, c.is_images)
    try:
        return all(ws.is_done(stage.name, chain) for stage, chain in stage_chain(run))
    except (InputError, OSError):  # the source has gone: let the run say so
        return False


# --- one capture: the Ray task's body -----------------------------------------------------------

def _stop_with_parent() -> None:
    """In the child, before exec: SIGINT when the Ray worker that started it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_capture(argv: list[str], log_path: str, gpus: float = 0.0) -> dict:
    """Run `python -m facesplat <argv>` with its output appended to `log_path`; returns
    {exit_code, cause, seconds}. A cancel (KeyboardInterrupt from ray.cancel) stops the child
    with SIGINT and waits for it, so its workspace is left resumable."""
    import facesplat

    env = dict(os.environ, TQDM_DISABLE="1")  # the log gets the result lines, not progress bars
    if not gpus:  # Ray leaves CUDA_VISIBLE_DEVICES alone for a task without GPUs: hide them, or
        env["CUDA_VISIBLE_DEVICES"] = ""  # --device auto would use a GPU another capture holds
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(facesplat.__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} facesplat {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "facesplat", *argv], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_stop_with_parent if sys.platform.startswith("linux") else None)
        try:
            code = _wait(proc)
        except BaseException:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    return {"exit_code": code, "cause": _error_line(Path(log_path), code), "seconds": round(time.time() - started, 1)}


def _wait(proc: subprocess.Popen) -> int:
    """Wait in short steps: ray.cancel's KeyboardInterrupt is raised between Python bytecodes,
    never inside one blocking wait."""
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass


def _error_line(log: Path, code: int) -> str:
    if code == 0:
        return ""
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 65536))
        tail = f.read().decode(errors="replace")
    errors = [line for line in tail.replace("\r", "\n").splitlines() if line.startswith("facesplat: error: ")]
    if errors:
        return errors[-1][len("facesplat: error: "):]
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return f"facesplat run {how} without an error message; see {log}"


# --- the batch ----------------------------------------------------------------------------------

def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise InputError(f"facesplat batch needs Ray ({err}); install it with: pip install '{RAY_REQUIREMENT}' "
                         "(or pip install 'facesplat[batch]')") from None
    return ray


def run_batch(args: argparse.Namespace) -> int:
    ray = _import_ray()
    from tqdm import tqdm

    output_dir = args.output_dir.resolve()
    if args.address and args.num_cpus is not None:
        raise InputError("--num-cpus sizes a local Ray instance; with --address the cluster's nodes say what they "
                         "have: drop --num-cpus")
    for flag, value in (("--num-cpus", args.num_cpus), ("--num-cpus-per-capture", args.num_cpus_per_capture),
                        ("--num-gpus-per-capture", args.num_gpus_per_capture)):
        if value is not None and (value < 0 or (flag == "--num-cpus" and value < 1)):
            raise InputError(f"{flag} {value:g} is not a sensible count; give a positive number")
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output-dir {output_dir} is a file; choose a folder")
    captures = list_captures(args.inputs, output_dir)
    batch_options = {o["key"]: getattr(args, o["key"]) for o in option_schema("run")
                     if getattr(args, o["key"], None) is not None}
    configure(captures, args.preset, batch_options)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create --output-dir {output_dir}: {err.strerror}; choose another folder") from None

    todo = [c for c in captures if not is_finished(c, output_dir)]
    todo_names = {c.name for c in todo}
    if todo:  # before anything is written: a cluster that cannot be reached leaves batch.json as it was
        _start_ray(ray, args)
    bar, pending = None, {}
    results = {c.name: _result(c, output_dir, "pending") if c.name in todo_names else
               _result(c, output_dir, "done", skipped=True) for c in captures}
    try:
        gpus = _gpus_per_capture(ray, args) if todo else 0.0
        if todo:
            _check_feasible(ray, args, gpus)
        bar = tqdm(total=len(captures), initial=len(captures) - len(todo), desc="captures", file=sys.stderr,
                   unit="capture", bar_format="{desc} {n_fmt}/{total_fmt}|{bar:24}| {elapsed}<{remaining}")

        def say(line: str) -> None:
            bar.write(line, file=sys.stderr)

        for c in captures:
            if c.name not in todo_names:
                say(f"done    {c.name}: already finished, skipped ({_figures_line(results[c.name])})")
        if todo:
            say(f"running {len(todo)} captures on Ray ({_cluster_line(ray)}), {args.num_cpus_per_capture:g} CPU "
                f"and {gpus:g} GPU each")
        task = ray.remote(run_capture)
        for c in todo:
            ref = task.options(num_cpus=args.num_cpus_per_capture, num_gpus=gpus, name=f"facesplat {c.name}") \
                .remote(run_argv(c, output_dir, args.preset), str(c.log(output_dir)), gpus)
            pending[ref] = c
        _write_tables(output_dir, args.inputs, results)
        while pending:
            # A timeout, so that Ctrl-C (handled between Python bytecodes) is not held until a capture ends.
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                c = pending.pop(ref)
                results[c.name] = _finished_result(ray, ref, c, output_dir)
                say(_finished_line(results[c.name]))
                bar.update(1)
            if ready:
                _write_tables(output_dir, args.inputs, results)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print("facesplat: interrupted; stopping the running captures (their workspaces stay resumable) ...",
              file=sys.stderr)
        _cancel(ray, pending, results, output_dir)
        _write_tables(output_dir, args.inputs, results)
        print(f"facesplat: interrupted; run the same batch again to resume ({output_dir / 'batch.json'})",
              file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
        if todo:
            ray.shutdown()  # stops the local instance (with --address: only disconnects)
    return _summary(results)


def _start_ray(ray, args) -> None:
    import logging

    if args.address:
        _check_reachable(args.address)
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if args.address:
            ray.init(address=args.address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            # "local": a new instance of our own, even when a `ray start` cluster runs on this machine.
            ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {args.address}" if args.address else "a local Ray instance"
        advice = ("check the address ('ray status' on the head node); a cluster with token authentication (Ray's "
                  "default) also needs RAY_AUTH_MODE=token and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
                  if args.address else "see Ray's message above")
        raise InputError(f"cannot start or reach {where} ({str(err).splitlines()[0] if str(err) else err!r}); "
                         f"{advice}") from None
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)  # ray.init makes SIGTERM a bare sys.exit; ours stops the tasks


def _check_reachable(address: str) -> None:
    """A HOST:PORT nobody listens on: say so now (ray.init retries it for many minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise InputError(f"nothing answers at --address {address} ({err.strerror or err}); start the cluster "
                         "('ray start --head' on the head node) or fix the address") from None


def _gpus_per_capture(ray, args) -> float:
    if args.num_gpus_per_capture is not None:
        return args.num_gpus_per_capture
    device = getattr(args, "device", None) or "auto"
    return 1.0 if device in ("auto", "cuda") and ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _check_feasible(ray, args, gpus: float) -> None:
    """A task no node can hold waits forever: say so now (a cluster that scales up may add such a
    node later, so there it is a warning)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= args.num_cpus_per_capture and n.get("GPU", 0) >= gpus for n in nodes):
        return
    need = f"{args.num_cpus_per_capture:g} CPUs and {gpus:g} GPUs"
    if not args.address:
        raise InputError(f"each capture asks for {need} but this machine offers {_cluster_line(ray)}; lower "
                         "--num-cpus-per-capture / --num-gpus-per-capture")
    print(f"facesplat: warning: no node of the cluster has {need} free for one capture ({_cluster_line(ray)}); "
          "the tasks wait until one joins", file=sys.stderr)


def _cluster_line(ray) -> str:
    total = ray.cluster_resources()
    return f"{len([n for n in ray.nodes() if n.get('Alive')])} node(s), {total.get('CPU', 0):g} CPUs, " \
           f"{total.get('GPU', 0):g} GPUs"


def _finished_result(ray, ref, c: Capture, output_dir: Path) -> dict:
    try:
        outcome = ray.get(ref)
    except ray.exceptions.RayError as err:  # the worker died (out of memory, node lost) after Ray's retries
        cause = (str(getattr(err, "cause", None) or err).strip().splitlines() or [type(err).__name__])[0]
        return _result(c, output_dir, "failed", cause=f"Ray could not run it: {cause[:300]}")
    if outcome["exit_code"] == 0:
        return _result(c, output_dir, "done", wall_seconds=outcome["seconds"])
    return _result(c, output_dir, "failed", cause=outcome["cause"], wall_seconds=outcome["seconds"])


def _cancel(ray, pending: dict, results: dict, output_dir: Path) -> None:
    """Cancel every task (a running one gets KeyboardInterrupt, so its child SIGINT) and wait for
    the running ones to stop; a capture that still finishes in that time counts as done."""
    for ref in pending:
        ray.cancel(ref)
    deadline = time.time() + STOP_SECONDS + 10
    try:
        while pending and time.time() < deadline:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
            for ref in ready:
                c = pending.pop(ref)
                with contextlib.suppress(ray.exceptions.RayError):  # TaskCancelledError, mostly
                    ray.get(ref)
                results[c.name] = _result(c, output_dir, "done") if is_finished(c, output_dir) else \
                    _result(c, output_dir, "interrupted", cause="interrupted; run the same batch again to resume")
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting; the children get SIGINT as Ray shuts down
        pass
    for c in pending.values():
        results[c.name] = _result(c, output_dir, "interrupted", cause="interrupted; run the same batch again to resume")


def _result(c: Capture, output_dir: Path, status: str, cause: str = "", skipped: bool = False,
            wall_seconds: float | None = None) -> dict:
    """One row of batch.json: status, cause, the figures of the capture's report.json, its paths."""
    report = Workspace(c.workspace(output_dir)).read_report()  # {} where there is none (yet)
    stage_seconds = report.get("stage_seconds") if isinstance(report.get("stage_seconds"), dict) else {}
    head = c.head_ply(output_dir)
    return {"name": c.name, "status": status, "cause": cause, "skipped": skipped,
            "frames_registered": report.get("frames_registered"), "frames_sampled": report.get("frames_sampled"),
            "gaussians": report.get("gaussians_after_isolation"), "psnr_in_mask_db": report.get("psnr_in_mask_db"),
            "seconds": round(sum(stage_seconds.values()), 1) if stage_seconds else None,
            "wall_seconds": wall_seconds,
            "head_ply": str(head) if status == "done" and head.is_file() else "",
            "workspace": str(c.workspace(output_dir)), "log": str(c.log(output_dir)), "input": str(c.source)}


def _write_tables(output_dir: Path, inputs: Path, results: dict) -> None:
    rows = list(results.values())
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "interrupted", "pending")}
    doc = {"inputs": str(Path(inputs).resolve()), "output_dir": str(output_dir),
           "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "captures_total": len(rows), **counts, "captures": rows}
    atomic_write_bytes(output_dir / "batch.json", (json.dumps(doc, indent=1) + "\n").encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if r[k] is None else r[k]) for k in CSV_COLUMNS} for r in rows)
    atomic_write_bytes(output_dir / "batch.csv", buf.getvalue().encode())


def _figures_line(r: dict) -> str:
    parts = []
    if r["gaussians"] is not None:
        parts.append(f"{r['gaussians']} Gaussians")
    if r["frames_registered"] is not None:
        parts.append(f"{r['frames_registered']}/{r['frames_sampled']} frames registered")
    if isinstance(r["psnr_in_mask_db"], (int, float)):
        parts.append(f"PSNR {r['psnr_in_mask_db']:.1f} dB")
    if r["seconds"] is not None:
        parts.append(f"{r['seconds']:g} s")
    return ", ".join(parts)


def _finished_line(r: dict) -> str:
    if r["status"] == "done":
        return f"done    {r['name']}: {_figures_line(r)} -> {r['head_ply']}"
    return f"failed  {r['name']}: {r['cause']} (log: {r['log']})"


def _summary(results: dict) -> int:
    failed = [r for r in results.values() if r["status"] != "done"]
    print(f"{len(results) - len(failed)} of {len(results)} captures done" +
        (f", {len(failed)} failed (see batch.csv)" if failed else ""), file=sys.stderr)
    if failed:
        raise BatchFailed(f"{len(failed)} of {len(results)} captures failed (first: {failed[0]['name']}: "
                          f"{failed[0]['cause']}); fix them and run the same batch again: finished captures are "
                          "skipped")
    return 0


class BatchFailed(StageError):
    """Some captures failed (exit 3, StageError's code); the others finished."""
