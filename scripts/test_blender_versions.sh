#!/usr/bin/env bash
# Run the Blender add-on tests (tests/blender, without the real-backend ones) on several Blender
# versions, each as bpy from PyPI in its own virtual environment.
#
#   scripts/test_blender_versions.sh                 # bpy 4.2.23 (the oldest the manifest allows) and 5.0.1
#   scripts/test_blender_versions.sh 4.2.23          # one version
#   PYTEST_ARGS="-x -k import" scripts/test_blender_versions.sh 5.0.1
#
# Needs Python 3.11 (bpy 4.2-5.0 are cp311 wheels; `PYTHON=...` to choose it) and PyPI access the
# first time: each bpy wheel is ~300-370 MB. The environments are kept in $BPY_VENVS
# (default ~/.cache/facesplat/bpy-venvs) and reused. Not part of CI (too big a download).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
BPY_VENVS=${BPY_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/facesplat/bpy-venvs}
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(4.2.23 5.0.1)
# What tests/blender imports besides bpy: numpy<2 (bpy 4.2-5.0 are built against numpy 1.x),
# plyfile <= 1.1.3 (later ones need numpy 2), OpenCV 4.11 (the last for numpy 1.x) to write frames.
TEST_DEPS=("numpy<2" pytest "plyfile<=1.1.3" "opencv-python-headless==4.11.0.86")

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null \
  || { echo "test_blender_versions: $PYTHON is not Python 3.11 (bpy 4.2-5.0 need it); set PYTHON=" >&2; exit 2; }

declare -A RESULT
status=0
for version in "${VERSIONS[@]}"; do
  env="$BPY_VENVS/bpy-$version"
  if [ ! -x "$env/bin/python" ] || ! "$env/bin/python" -c "import importlib.metadata as m; assert m.version('bpy') == '$version'" 2>/dev/null; then
    echo "== bpy $version: creating $env"
    rm -rf "$env"
    "$PYTHON" -m venv "$env"
    "$env/bin/python" -m pip install -q --disable-pip-version-check "bpy==$version" "${TEST_DEPS[@]}"
  fi
  echo "== bpy $version: tests/blender -m 'not backend' ${PYTEST_ARGS:-}"
  # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
  if "$env/bin/python" -m pytest -q -p no:cacheprovider tests/blender -m "not backend" ${PYTEST_ARGS:-}; then
    RESULT[$version]=passed
  else
    RESULT[$version]=FAILED
    status=1
  fi
done
echo
for version in "${VERSIONS[@]}"; do echo "bpy $version: ${RESULT[$version]}"; done
exit $status
