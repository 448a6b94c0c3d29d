"""A stand-in for the FaceSplat backend CLI, for testing the Blender add-on's Run, Cancel and
Re-isolate without the real pipeline. Same command line, same workspace files, fake contents."""
