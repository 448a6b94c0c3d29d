"""Command line: `facesplat run`, `isolate`, `check`, `convert`, `view` and `batch`. The only module that exits.

The flags come from core/config.py's knobs (`option_schema`), so the CLI and the Blender add-on
show the same defaults, bounds and choices.

Library code raises FaceSplatError subclasses; here they become one line on stderr and an exit
code, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import interrupt
from .config import DEFAULT_PRESET, PRESETS, ConfigError, make_config, option_schema, validate
from .errors import FaceSplatError, InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facesplat", description="Phone video of a head -> isolated 3D Gaussian splat of the head (3DGS PLY).")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline (resumes an interrupted workspace)")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path, help="video of the head, the camera moving around it")
    source.add_argument("--images", type=Path, help="folder of photos of the head instead of a video")
    run.add_argument("--output", type=Path, required=True, help="where to write the head's PLY")
    run.add_argument("--workspace", type=Path,
                     help="folder for stage results (default: <output without .ply>_workspace next to the output)")
    run.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                     help="starting settings, which the flags below override: " + "; ".join(
                         f"{name}: {', '.join(f'{k.split(chr(46))[1]}={v}' for k, v in values.items()) or 'the defaults'}"
                         for name, values in PRESETS.items()) + " (default %(default)s)")
    _add_options(run, "run")

    iso = sub.add_parser("isolate", help="re-run head isolation on a finished workspace (seconds)")
    iso.add_argument("--workspace", type=Path, required=True)
    iso.add_argument("--output", type=Path, required=True)
    _add_options(iso, "isolate")

    check = sub.add_parser("check", help="say what state a workspace is in and whether its files are consistent")
    check.add_argument("--workspace", type=Path, required=True)

    # --- convert: splat formats (core/formats.py) ---
    convert = sub.add_parser("convert", help="convert a splat between .ply, .spz, .compressed.ply and .html")
    convert.add_argument("input", type=Path, help="a .ply, .spz, .compressed.ply or FaceSplat .html file "
                                                  "(told apart by content)")
    convert.add_argument("output", type=Path, help="the format follows the suffix: .ply, .spz, .compressed.ply "
                                                   "or .html (the browser viewer)")

    # --- view: one self-contained HTML page that shows the splat offline (core/viewer_html.py) ---
    view = sub.add_parser("view", help="write a self-contained HTML viewer of a splat (opens offline, from file://)")
    view.add_argument("input", type=Path, help="a .ply, .spz or .compressed.ply file")
    view.add_argument("--output", type=Path, help="the .html file to write (default: INPUT with .html)")

    # --- batch: many captures as Ray tasks (batch.py; imports Ray only when it runs) ---
    from .batch import add_batch_parser

    add_batch_parser(sub, _add_options)
    return parser


_TYPES = {"int": int, "float": float, "str": str}


def _add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The knobs of core/config.py that have a flag: names, types, choices and help from there."""
    for option in option_schema(command):
        kwargs = {"dest": option["key"], "default": None,
                  "help": option["help"].replace("%", "%%") + (f" (default {option['default']})"
                                                               if option["type"] != "bool" else "")}
        if option["type"] == "bool":
            kwargs.update(action="store_const", const=not option["invert"])
        else:
            kwargs.update(type=_TYPES[option["type"]], choices=option["choices"],
                          metavar=None if option["choices"] else {"int": "N", "float": "X"}.get(option["type"]))
        parser.add_argument(option["flag"], **kwargs)


def config_from_args(args, command: str):
    """Preset, then the flags given (None = not given), then the bounds check."""
    overrides = {o["key"]: getattr(args, o["key"]) for o in option_schema(command)
                 if getattr(args, o["key"], None) is not None}
    try:
        return validate(make_config(getattr(args, "preset", DEFAULT_PRESET), **overrides))
    except ConfigError as err:
        raise InputError(str(err)) from None


class ConsoleProgress:
    """One tqdm bar per stage on stderr, fed by the same events the add-on reads."""

    def __init__(self):
        from tqdm import tqdm

        self._tqdm, self._bar, self._stage = tqdm, None, None

    def __call__(self, event: dict) -> None:
        stage = event["stage"]
        if stage in ("done", "error"):
            self.close()
            return
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = self._tqdm(total=100, desc=f"{stage:>7}", file=sys.stderr, mininterval=0.5,
                                   bar_format="{desc} {percentage:3.0f}%|{bar:24}| {elapsed} {postfix}")
        self._bar.n = round(100 * event["progress"])
        self._bar.set_postfix_str(event.get("message", "")[:70], refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv.insert(0, "run")  # the seed's flat flags: facesplat --video ... --output ...
    args = build_parser().parse_args(argv)
    interrupt.install()  # SIGTERM (Cancel in Blender) takes the same clean path as Ctrl-C
    progress = ConsoleProgress()
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "convert":
            return _convert(args.input, args.output)
        if args.command == "view":
            output = args.output or args.input.with_suffix(".html")
            if not output.name.lower().endswith((".html", ".htm")):
                raise InputError(f"{output}: the viewer is an HTML page; end --output with .html")
            return _convert(args.input, output)
        if args.command == "batch":
            from .batch import run_batch

            return run_batch(args)
        cfg = config_from_args(args, args.command)
        from . import pipeline
        from .core.events import EventWriter
        from .render.device import choose_device
        from .stage import StageContext
        from .workspace import Workspace

        if args.command == "run":
            device = choose_device(cfg.device)
            ws = Workspace(args.workspace or args.output.with_name(args.output.stem + "_workspace"))
            ctx = StageContext(EventWriter(ws.events, echo=progress), device)
            report = pipeline.run(args.video or args.images, args.images is not None, args.output, ws, cfg, ctx)
            progress.close()
            print(f"wrote {args.output}: {report.get('gaussians_after_isolation')} Gaussians "
                  f"({report.get('frames_registered')}/{report.get('frames_sampled')} frames registered); "
                  f"workspace {ws.root}", file=sys.stderr)
        else:
            ws = Workspace.open(args.workspace)
            ctx = StageContext(EventWriter(ws.events, echo=progress), choose_device(cfg.device, say=lambda msg: None))
            report = pipeline.reisolate(ws, args.output, cfg, ctx)
            progress.close()
            print(f"wrote {args.output}: kept {report['gaussians_after_isolation']} of "
                  f"{report['gaussians_before_isolation']} Gaussians", file=sys.stderr)
        return 0
    except FaceSplatError as err:
        progress.close()
        print(f"facesplat: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        progress.close()
        print("facesplat: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _check(args) -> int:
    from .pipeline import check_workspace
    from .workspace import Workspace

    lines, problems = check_workspace(Workspace.open(args.workspace))
    print("\n".join(lines))
    if problems:
        print(f"facesplat: error: the workspace is inconsistent: {problems[0]}; delete the damaged stage's files "
              "(or the workspace) and run again", file=sys.stderr)
        return 3
    return 0


def _convert(source: Path, output: Path) -> int:
    """Read any splat format, write the one OUTPUT's suffix names (atomically: nothing on error)."""
    from .core.formats import format_for_output, read_splats, write_splats
    from .core.ply import PlyFormatError

    try:
        format_for_output(output)
        if output.exists() and source.exists() and output.resolve() == source.resolve():
            raise InputError(f"{output} is the input; choose another output file name")
        splats = read_splats(source)
        fmt = write_splats(output, splats)
    except (PlyFormatError, ValueError) as err:
        raise InputError(str(err)) from None
    except OSError as err:
        raise InputError(f"cannot write {output}: {err.strerror}; choose another output path") from None
    print(f"wrote {output} ({fmt}): {len(splats)} Gaussians, SH degree {splats.sh_degree}, "
          f"{output.stat().st_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
