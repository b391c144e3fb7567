"""What Slicer's own Python really imports (not only the import statements): every Qt-free part of the module and the
effect, plus the library parts they load at run time (samadapt3d.client pulls in the session, the engines' base and
preprocess), must leave torch unimported: models run in the server's process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "SAMAdapt3D"
SLICER_SIDE = ("effect_prompts", "effect_markups", "effect_runner", "effect_session", "scene_bridge", "segment_io",
               "core", "training", "downloads", "dependencies", "server_control")


def test_slicer_side_never_imports_torch_at_run_time():
    code = (f"import sys; sys.path.insert(0, {str(MODULE_DIR)!r})\n"
            f"for name in {SLICER_SIDE!r}:\n    __import__('SAMAdapt3DSlicerLib.' + name)\n"
            "import samadapt3d.client, samadapt3d.automatic, samadapt3d.volume, samadapt3d.errors\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", done.stdout
