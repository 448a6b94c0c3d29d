"""Command line: `facesplat run ...` and `facesplat isolate ...`. The only module that exits.

Library code raises FaceSplatError subclasses; here they become one line on stderr and an exit
code, never a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .config import Config, FramesConfig, IsolateConfig, MaskConfig, TrainConfig
from .errors import FaceSplatError

_DEFAULTS = Config()


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
    run.add_argument("--num-frames", type=int, default=FramesConfig.num_frames, help="frames to sample (default %(default)s)")
    run.add_argument("--height", type=int, default=FramesConfig.height, help="frame height in pixels (default %(default)s)")
    run.add_argument("--num-iters", type=int, default=TrainConfig.num_iters, help="training steps (default %(default)s)")
    run.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu", "mps"], help="compute device (default auto)")
    run.add_argument("--ellipse-masks", action="store_true",
                     help="keep the plain head ellipses instead of cutting them to the head's silhouette by colour "
                          "(try it when head.ply misses hair or ears that match the background's colour)")
    _isolation_args(run)

    iso = sub.add_parser("isolate", help="re-run head isolation on a finished workspace (seconds)")
    iso.add_argument("--workspace", type=Path, required=True)
    iso.add_argument("--output", type=Path, required=True)
    _isolation_args(iso)
    return parser


def _isolation_args(p) -> None:
    p.add_argument("--threshold", type=float, default=IsolateConfig.threshold,
                   help="keep Gaussians inside the head mask in more than this fraction of the views that see them (default %(default)s)")
    p.add_argument("--min-opacity", type=float, default=IsolateConfig.min_opacity,
                   help="...and more opaque than this (default %(default)s)")


def _check_ranges(args) -> None:
    from .errors import InputError

    if getattr(args, "num_frames", 3) < 3:
        raise InputError(f"--num-frames {args.num_frames} is too few; structure from motion needs at least 3 (40 is typical)")
    if getattr(args, "height", 64) < 64:
        raise InputError(f"--height {args.height} is too small; use 270 or more")
    if getattr(args, "num_iters", 1) < 1:
        raise InputError("--num-iters must be at least 1")
    if not 0.0 <= args.threshold < 1.0:
        raise InputError(f"--threshold {args.threshold} is outside 0..1; 0.3 is typical")
    if not 0.0 <= args.min_opacity < 1.0:
        raise InputError(f"--min-opacity {args.min_opacity} is outside 0..1; 0.05 is typical")


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


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv.insert(0, "run")  # the seed's flat flags: facesplat --video ... --output ...
    args = build_parser().parse_args(argv)
    # SIGTERM (e.g. Cancel in Blender) takes the same clean path as Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    progress = ConsoleProgress()
    try:
        _check_ranges(args)
        from . import pipeline
        from .core.events import EventWriter
        from .workspace import Workspace

        iso = IsolateConfig(threshold=args.threshold, min_opacity=args.min_opacity)
        if args.command == "run":
            workspace = args.workspace or args.output.with_name(args.output.stem + "_workspace")
            ws = Workspace(workspace)
            cfg = Config(frames=FramesConfig(num_frames=args.num_frames, height=args.height),
                         masks=MaskConfig(refine=not args.ellipse_masks), train=TrainConfig(num_iters=args.num_iters),
                         isolate=iso, device=args.device)
            report = pipeline.run(args.video or args.images, args.images is not None, args.output, ws, cfg,
                                  EventWriter(ws.events, echo=progress))
            progress.close()
            print(f"wrote {args.output}: {report.get('gaussians_after_isolation')} Gaussians "
                  f"({report.get('frames_registered')}/{report.get('frames_sampled')} frames registered); "
                  f"workspace {ws.root}", file=sys.stderr)
        else:
            if not args.workspace.is_dir():
                raise FaceSplatError(f"workspace {args.workspace} does not exist; give the folder of a finished 'facesplat run'")
            ws = Workspace(args.workspace)
            summary = pipeline.reisolate(ws, args.output, Config(isolate=iso), EventWriter(ws.events, echo=progress))
            progress.close()
            print(f"wrote {args.output}: kept {summary['gaussians_after_isolation']} of "
                  f"{summary['gaussians_before_isolation']} Gaussians", file=sys.stderr)
        return 0
    except FaceSplatError as err:
        progress.close()
        print(f"facesplat: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        progress.close()
        print("facesplat: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
