"""Blender properties: run settings and the batch list (Scene), the running job (WindowManager),
per-object links."""

from pathlib import Path

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)
from bpy.types import PropertyGroup

from . import batches, display
from .core.config import DEFAULT_PRESET, PRESETS, get_value, make_config, option_schema
from .runner import SETTINGS


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


# Defaults, bounds, choices and descriptions of the run settings come from core/config.py, the
# CLI's source too; only the labels and how Blender shows them are written here.
OPTIONS = {option["key"]: option for option in option_schema()}
DEFAULTS = make_config(DEFAULT_PRESET)  # what `facesplat run` uses without flags
PRESENTATION = {  # per runner.SETTINGS name: label, slider range, subtype
    "num_frames": {"name": "Frames", "soft_max": 300},
    "height": {"name": "Height", "soft_max": 2160, "subtype": "PIXEL"},
    "num_iters": {"name": "Iterations", "soft_max": 30000},
    "seed": {"name": "Seed"},
    "silhouette_masks": {"name": "Silhouette Masks"},
    "threshold": {"name": "Threshold", "subtype": "FACTOR"},
    "min_opacity": {"name": "Min Opacity", "subtype": "FACTOR", "precision": 3},
    "device": {"name": "Device"},
}
CHOICE_LABELS = {"auto": ("Auto", OPTIONS["device"]["help"]), "cuda": ("CUDA", "NVIDIA GPU"),
                 "cpu": ("CPU", "No GPU (slow)"), "mps": ("MPS", "Apple GPU")}
DEVICES = [(choice, label, _sentence(text)) for choice in OPTIONS["device"]["choices"]
           for label, text in [CHOICE_LABELS.get(choice, (choice.upper(), ""))]]
DEFAULT_DEVICE = DEFAULTS.device
USE_PREFERENCES = ("PREFS", "Default", "The device set in the add-on preferences")
# Choosing a preset sets the settings that any preset changes (the rest keep the user's values);
# the run passes --preset too, for the knobs the panel does not show.
PRESET_KEYS = {key for values in PRESETS.values() for key in values}


def _setting_property(name: str, option: dict):
    """The Blender property of one run setting, from its core.config option."""
    shown = dict(PRESENTATION[name])
    default = get_value(DEFAULTS, option["key"])
    # The property holds the config value; an inverted flag's help says what turning it off does.
    description = _sentence(("off: " if option["invert"] else "") + option["help"])
    bounds = {k: option[k] for k in ("min", "max") if option[k] is not None}
    if "soft_max" in shown and "max" in bounds:
        shown["soft_max"] = min(shown["soft_max"], bounds["max"])
    if option["type"] == "bool":
        return BoolProperty(default=default, description=description, **shown)
    if option["type"] == "int":
        return IntProperty(default=default, description=description, **bounds, **shown)
    if option["type"] == "float":
        return FloatProperty(default=default, description=description, **bounds, **shown)
    if option["key"] == "device":
        return EnumProperty(items=[USE_PREFERENCES] + DEVICES, default=USE_PREFERENCES[0],
                            description=description, **shown)
    raise TypeError(f"no Blender property for {option['key']} ({option['type']})")


def _label(key: str) -> str:
    """The panel's label of a config key ('max gaussians' for train.max_gaussians, which it does not show)."""
    return next((PRESENTATION[name]["name"] for name, k in SETTINGS.items() if k == key),
                key.split(".")[-1].replace("_", " "))


def _preset_item(name: str) -> tuple[str, str, str]:
    changes = ", ".join(f"{_label(key)} {value}" for key, value in PRESETS[name].items())
    return name, name.title(), changes or "The defaults"


def _apply_preset(settings, context) -> None:
    preset = make_config(settings.preset)
    for name, key in SETTINGS.items():
        if key in PRESET_KEYS:
            setattr(settings, name, get_value(preset, key))


def _settings_annotations() -> dict:
    """The Scene settings' properties: the input, then the preset and the run settings built from
    core.config (annotations made before register_class, which reads them)."""
    preset_settings = [key for key in SETTINGS.values() if key in PRESET_KEYS]
    return {
        "input_type": EnumProperty(name="Input", items=[
            ("VIDEO", "Video", "A video of the head, the camera moving around it"),
            ("IMAGES", "Images", "A folder of photos of the head"),
        ], default="VIDEO"),
        "video": StringProperty(name="Video", subtype="FILE_PATH", description="Video file of the head"),
        "images": StringProperty(name="Images", subtype="DIR_PATH", description="Folder of photos of the head"),
        "workspace": StringProperty(
            name="Workspace", subtype="DIR_PATH",
            description="Folder for the run's stages and results. Empty: facesplat/<input name> next to the "
                        ".blend, or in the temporary folder for an unsaved file"),
        "preset": EnumProperty(
            name="Preset", items=[_preset_item(name) for name in PRESETS], default=DEFAULT_PRESET,
            update=_apply_preset,
            description=f"Starting settings. Choosing one sets {', '.join(_label(k) for k in preset_settings)}; "
                        "the run uses its other settings too"),
        **{name: _setting_property(name, OPTIONS[key]) for name, key in SETTINGS.items()},
        "batch_dir": StringProperty(
            name="Batch", subtype="DIR_PATH", update=lambda settings, context: load_batch(settings),
            description="The --output-dir of a 'facesplat batch' run (the folder with batch.json): its captures "
                        "are listed below"),
        "batch_captures": CollectionProperty(type=FACESPLAT_PG_batch_capture),
        "batch_index": IntProperty(name="Capture", default=0, min=0),
        "batch_error": StringProperty(description="Why the batch folder lists no captures"),
        "splat_3dgs_colours": BoolProperty(
            name="3DGS Colours", default=False,
            update=lambda settings, context: display.set_3dgs_colours(settings.id_data, settings.splat_3dgs_colours),
            description="Blend the splats' colours as a 3DGS viewer does: they emit their sRGB values and the "
                        "scene's view transform becomes Raw (off: linear colours, Standard view transform)"),
    }


class FACESPLAT_PG_batch_capture(PropertyGroup):
    """One capture of the batch folder, as the list shows it (name: the capture's name)."""

    status: StringProperty(description="done, failed, interrupted or pending")
    cause: StringProperty(description="Why it cannot be imported (a failed capture's cause)")
    figures: StringProperty(description="Gaussians, frames registered, PSNR, seconds")
    importable: BoolProperty(default=False)


def load_batch(settings) -> str:
    """Fill the batch list from batch_dir's batch.json. Returns '' or the one-line reason it is
    empty (also kept in batch_error for the panel)."""
    settings.batch_captures.clear()
    settings.batch_error = ""
    if not settings.batch_dir.strip():
        return ""
    try:
        captures = batches.read_batch(Path(bpy.path.abspath(settings.batch_dir)))
    except ValueError as e:
        settings.batch_error = str(e)
        return settings.batch_error
    for capture in captures:
        item = settings.batch_captures.add()
        why = capture.why_not_importable()
        item.name, item.status, item.figures, item.importable = capture.name, capture.status, capture.figures, not why
        item.cause = (capture.cause or why) if why else ""
    settings.batch_index = max(0, min(settings.batch_index, len(captures) - 1))
    return ""


FACESPLAT_PG_settings = type("FACESPLAT_PG_settings", (PropertyGroup,), {
    "__doc__": "What to run: saved with the .blend (the backend's flags, the CLI's defaults).",
    "__module__": __name__, "__annotations__": _settings_annotations()})


class FACESPLAT_PG_job(PropertyGroup):
    """The backend command running now, as the panel shows it (not saved)."""

    running: BoolProperty(default=False)
    title: StringProperty(default="")
    stage: StringProperty(default="")
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    message: StringProperty(default="")
    cancel_requested: BoolProperty(default=False)


class FACESPLAT_PG_object(PropertyGroup):
    """Links an imported object back to its FaceSplat run."""

    role: EnumProperty(items=[("NONE", "None", ""), ("ROOT", "Run", "Parent of one run's objects"),
                              ("HEAD", "Head", "The head Gaussians"), ("CAMERA", "Camera", "A registered frame"),
                              ("CROP", "Crop Box", "A box whose inside Crop keeps (or deletes)")],
                       default="NONE")
    workspace: StringProperty(subtype="DIR_PATH", description="The run's workspace folder")
    source: StringProperty(subtype="FILE_PATH", description="The PLY file the Gaussians came from")
    frame_index: IntProperty(default=-1, description="Frame index in the source video")
    display: EnumProperty(name="Display", items=display.DISPLAY_MODES, default="POINTS",
                          update=lambda self, context: display.set_display(self.id_data,
                                                                           splats=self.display == "SPLATS"),
                          description="How the head's Gaussians are drawn")
    display_min_opacity: FloatProperty(
        name="Hide Below", default=0.0, min=0.0, max=1.0, subtype="FACTOR", precision=3,
        update=lambda self, context: display.set_display(self.id_data, min_opacity=self.display_min_opacity),
        description="Hide Gaussians whose opacity is below this (display only: export keeps them)")


classes = (FACESPLAT_PG_batch_capture, FACESPLAT_PG_settings, FACESPLAT_PG_job, FACESPLAT_PG_object)


def register_pointers():
    bpy.types.Scene.facesplat = PointerProperty(type=FACESPLAT_PG_settings)
    bpy.types.WindowManager.facesplat_job = PointerProperty(type=FACESPLAT_PG_job)
    bpy.types.Object.facesplat = PointerProperty(type=FACESPLAT_PG_object)


def unregister_pointers():
    del bpy.types.Object.facesplat
    del bpy.types.WindowManager.facesplat_job
    del bpy.types.Scene.facesplat
