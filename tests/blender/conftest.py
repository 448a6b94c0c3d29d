"""Fixtures for the Blender tests: the extension zip (once per session) and a bpy worker per module."""

import pytest

from blender_worker import BlenderWorker, build_extension


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "backend: runs the real FaceSplat backend end to end (CPU, tiny capture); "
                   "a failure here means the add-on and the backend CLI disagree")


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory):
    return build_extension(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def blender(extension_zip, tmp_path_factory):
    worker = BlenderWorker(tmp_path_factory.mktemp("blender_home"), extension_zip)
    yield worker
    worker.close()
