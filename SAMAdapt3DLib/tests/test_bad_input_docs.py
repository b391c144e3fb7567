"""What the README tells a new user: the Python example's clicks lie inside the CT it opens (the one shipped with
slicerio), on the structure it names, and no install line points at a registry package that does not exist."""
import re
from pathlib import Path

import numpy as np

from ci_requirements import require_module
from samadapt3d.volume import Volume

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has no Python example"
    return blocks[0]


def test_python_example_clicks_lie_in_the_shipped_ct():
    require_module("slicerio", "pip install slicerio")
    from samadapt3d.demo import load_demo_case, slicerio_data_dir

    code = python_example()
    assert 'slicerio_data_dir() / "CTChest4.nrrd"' in code
    volume = Volume.from_file(slicerio_data_dir() / "CTChest4.nrrd")
    _, truth = load_demo_case()
    clicks = re.findall(r"add_point\(\(([-0-9., ]+)\)(.*?)\)", code)
    assert len(clicks) == 2
    for numbers, rest in clicks:
        point = [float(v) for v in numbers.split(",")]
        space = re.search(r'space="(\w+)"', rest)
        ijk = volume.to_index(point, space.group(1) if space else "ijk")
        assert volume.contains_index(ijk).all(), (numbers, ijk)
        i, j, k = (int(round(v)) for v in ijk)
        inside = [name for name, mask in truth.items() if mask[k, j, i]]
        assert inside == (["right lung"] if "positive=False" not in rest else ["tissue"]), (numbers, inside)


def test_install_lines_use_the_clone_and_a_virtual_environment():
    docs = [README] + [p.read_text() for p in (ROOT / "SAMAdapt3DLib" / "samadapt3d").rglob("*.py")]
    assert not any('install "samadapt3d[' in text or "install samadapt3d[" in text for text in docs)
    first_command = re.search(r"\n    (python.*)\n", README).group(1)
    assert first_command.startswith("python3 -m venv .venv && . .venv/bin/activate")
    assert np.all(["pip install -e" in README, "virtual environment" in README])
