"""FaceSplat: phone video of a head -> isolated 3D Gaussian splat of the head.

Stages (one module each): frames -> masks -> sfm -> train -> isolate; pipeline.py runs them over
a Workspace; cli.py is the command line. core/ is numpy-only and shared with the Blender add-on.
"""

__version__ = "0.1.0"
