"""Blender properties: run settings (Scene), the running job (WindowManager), per-object links."""

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty
from bpy.types import PropertyGroup

DEVICES = [
    ("auto", "Auto", "CUDA if present, else Apple MPS, else CPU"),
    ("cuda", "CUDA", "NVIDIA GPU"),
    ("cpu", "CPU", "No GPU (slow: use few frames and iterations)"),
    ("mps", "MPS", "Apple GPU"),
]


class FACESPLAT_PG_settings(PropertyGroup):
    """What to run: saved with the .blend (the backend's flags, same defaults)."""

    input_type: EnumProperty(name="Input", items=[
        ("VIDEO", "Video", "A video of the head, the camera moving around it"),
        ("IMAGES", "Images", "A folder of photos of the head"),
    ], default="VIDEO")
    video: StringProperty(name="Video", subtype="FILE_PATH", description="Video file of the head")
    images: StringProperty(name="Images", subtype="DIR_PATH", description="Folder of photos of the head")
    workspace: StringProperty(
        name="Workspace", subtype="DIR_PATH",
        description="Folder for the run's stages and results. Empty: facesplat/<input name> next to the "
                    ".blend, or in the temporary folder for an unsaved file")
    num_frames: IntProperty(name="Frames", default=40, min=3, soft_max=300,
                            description="Frames sampled from the video (at most this many images)")
    height: IntProperty(name="Height", default=540, min=64, soft_max=2160, subtype="PIXEL",
                        description="Frame height the backend works at")
    num_iters: IntProperty(name="Iterations", default=3000, min=1, soft_max=30000,
                           description="Training steps")
    silhouette_masks: BoolProperty(
        name="Silhouette Masks", default=True,
        description="Cut each head mask to the head's outline by colour, so no background is trained as head. "
                    "Turn off if the head comes out missing hair or ears that match the background's colour")
    device: EnumProperty(name="Device", items=[("PREFS", "Default", "The device set in the add-on preferences")]
                         + DEVICES, default="PREFS")
    threshold: FloatProperty(name="Threshold", default=0.3, min=0.0, max=0.99, subtype="FACTOR",
                             description="Keep a Gaussian inside the head mask in more than this fraction "
                                         "of the views that see it (lower keeps more)")
    min_opacity: FloatProperty(name="Min Opacity", default=0.05, min=0.0, max=0.99, subtype="FACTOR",
                               description="Drop Gaussians more transparent than this")


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
                              ("HEAD", "Head", "The head Gaussians"), ("CAMERA", "Camera", "A registered frame")],
                       default="NONE")
    workspace: StringProperty(subtype="DIR_PATH", description="The run's workspace folder")
    source: StringProperty(subtype="FILE_PATH", description="The PLY file the Gaussians came from")
    frame_index: IntProperty(default=-1, description="Frame index in the source video")


classes = (FACESPLAT_PG_settings, FACESPLAT_PG_job, FACESPLAT_PG_object)


def register_pointers():
    bpy.types.Scene.facesplat = PointerProperty(type=FACESPLAT_PG_settings)
    bpy.types.WindowManager.facesplat_job = PointerProperty(type=FACESPLAT_PG_job)
    bpy.types.Object.facesplat = PointerProperty(type=FACESPLAT_PG_object)


def unregister_pointers():
    del bpy.types.Object.facesplat
    del bpy.types.WindowManager.facesplat_job
    del bpy.types.Scene.facesplat
