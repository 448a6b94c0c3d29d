"""Blender-free, torch-free core shared by the backend and the Blender add-on.

Nothing in this package imports bpy, mathutils, torch or anything outside the standard
library and numpy. build.py copies it into the add-on, so the add-on and the backend read and
write PLY files, cameras and progress events with the same code. If a feature here needs
Blender, take it as an argument and let the Blender side supply it.
"""
