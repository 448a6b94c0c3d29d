"""The panel's run settings in real Blender against the CLI: the same defaults, bounds, choices and
descriptions (both come from core/config.py), and the command the Run button builds parses, with
the backend's own parser, into the config the CLI makes."""

import sys

import numpy as np
import pytest

from blender_worker import ADDON_MODULE, REPO, addon, import_addon_module

sys.path.insert(0, str(REPO / "backend"))
from facesplat.cli import build_parser, config_from_args  # noqa: E402
from facesplat.config import PRESETS, option_schema  # noqa: E402

SETTINGS = import_addon_module("runner").SETTINGS
BLENDER_TYPES = {"int": "INT", "float": "FLOAT", "bool": "BOOLEAN", "str": "ENUM"}


# ---- run inside Blender -------------------------------------------------------------------------

def _rna(prop) -> dict:
    out = {"type": prop.type, "description": prop.description}
    if prop.type in ("INT", "FLOAT"):
        out.update(default=prop.default, min=prop.hard_min, max=prop.hard_max)
    elif prop.type == "BOOLEAN":
        out["default"] = prop.default
    elif prop.type == "ENUM":
        out.update(default=prop.default, choices=[item.identifier for item in prop.enum_items],
                   item_descriptions={item.identifier: item.description for item in prop.enum_items})
    return out


def w_settings(video):
    """The settings' property definitions, and the Run command of a fresh scene, of the preview
    preset, and of the floats at their maxima."""
    import bpy

    settings_rna = bpy.types.Scene.bl_rna.properties["facesplat"].fixed_type
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    definitions = {name: _rna(settings_rna.properties[name]) for name in [*SETTINGS, "preset"]}
    definitions["preferences.device"] = _rna(prefs.bl_rna.properties["device"])

    job_factories = addon("job_factories")
    scene = bpy.data.scenes.new("settings test")  # fresh: every setting at its default
    old_python = prefs.python
    prefs.python = sys.executable
    try:
        with bpy.context.temp_override(scene=scene):
            s = bpy.context.scene.facesplat
            s.input_type, s.video = "VIDEO", str(video)

            def run_argv():
                return job_factories.run_job(bpy.context).commands[0]

            commands = {"default": run_argv()}
            s.preset = "preview"
            commands["preview"] = run_argv()
            preview_values = {name: getattr(s, name) for name in SETTINGS}
            s.preset = "standard"
            commands["standard again"] = run_argv()
            s.threshold, s.min_opacity = settings_rna.properties["threshold"].hard_max, 1.0  # clamped to the max
            commands["maxima"] = run_argv()
    finally:
        prefs.python = old_python
        bpy.data.scenes.remove(scene)
    return definitions, commands, preview_values


# ---- tests --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def in_blender(blender, tmp_path_factory):
    video = tmp_path_factory.mktemp("settings") / "v.mp4"
    video.write_bytes(b"")  # Run only checks that the file exists
    return blender.call(w_settings, video)


def cli_config(argv):
    args = build_parser().parse_args(argv)
    return config_from_args(args, args.command)


def f32(x):
    return np.float32(x)


def test_the_panels_settings_show_the_clis_defaults_bounds_and_choices(in_blender):
    definitions, _, _ = in_blender
    cli = cli_config(["run", "--video", "v", "--output", "o"])
    options = option_schema("run")
    assert sorted(SETTINGS.values()) == sorted(o["key"] for o in options)
    for name, key in SETTINGS.items():
        option, prop = next(o for o in options if o["key"] == key), definitions[name]
        section, _, field = key.rpartition(".")
        cli_default = getattr(getattr(cli, section) if section else cli, field)
        assert prop["type"] == BLENDER_TYPES[option["type"]], name
        assert option["help"][1:] in prop["description"], name  # the CLI's help, as one sentence
        if option["choices"]:
            assert prop["choices"] == ["PREFS", *option["choices"]] and prop["default"] == "PREFS", name
            assert definitions["preferences.device"]["choices"] == option["choices"]
            assert definitions["preferences.device"]["default"] == cli_default
            continue
        assert f32(prop["default"]) == f32(cli_default), (name, prop["default"], cli_default)
        for bound in ("min", "max"):
            if option[bound] is not None:
                assert f32(prop[bound]) == f32(option[bound]), (name, bound, prop[bound], option[bound])
    assert definitions["preset"]["choices"] == list(PRESETS)
    # a preset's description names what it changes; the knobs the panel does not show, in words
    preview = definitions["preset"]["item_descriptions"]["preview"]
    hidden = [key for key in PRESETS["preview"] if key not in SETTINGS.values()]
    assert hidden and all(f"{key.split('.')[1].replace('_', ' ')} {PRESETS['preview'][key]}" in preview
                          for key in hidden), preview


def test_the_run_buttons_command_is_what_the_cli_would_run(in_blender):
    _, commands, preview_values = in_blender
    base = ["run", "--video", "v", "--output", "o"]
    for which in ("default", "standard again"):
        argv = commands[which]
        assert argv[1:3] == ["-m", "facesplat"]
        assert cli_config(argv[3:]) == cli_config(base), which
    assert cli_config(commands["preview"][3:]) == cli_config(base + ["--preset", "preview"])
    shown = {key: name for name, key in SETTINGS.items()}
    assert shown.keys() & PRESETS["preview"].keys(), "the preview preset changes settings the panel shows"
    for key, value in PRESETS["preview"].items():  # the panel shows what the preset set (--preset passes the rest)
        if key in shown:
            assert preview_values[shown[key]] == value
    maxima = cli_config(commands["maxima"][3:])  # single-precision maxima stay within the CLI's bounds
    bounds = {o["key"]: o["max"] for o in option_schema("run")}
    assert (maxima.isolate.threshold, maxima.isolate.min_opacity) == (bounds["isolate.threshold"],
                                                                      bounds["isolate.min_opacity"])
