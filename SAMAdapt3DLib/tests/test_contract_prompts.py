"""The shared prompt helpers (engines.prompts): one click rounding and one negative split for every engine."""
import numpy as np
import pytest

from samadapt3d.engines.prompts import click_voxel, click_voxels, negative_cut, nearer_to_negative
from samadapt3d.families.base import CropModel, SliceModel


@pytest.mark.parametrize("x, voxel", [(2.5, 3), (3.5, 4), (-0.5, 0), (1.4999, 1), (0.5, 1), (7.0, 7)])
def test_click_rounding_is_floor_of_x_plus_half(x, voxel):
    assert click_voxel((x, x, x)) == (voxel,) * 3  # halves round up, unlike np.round's half-to-even


def test_click_rounding_clips_to_the_shape():
    assert click_voxels([[-3.0, 9.7], [1.2, 4.5]], shape=(5, 8)).tolist() == [[0, 7], [1, 5]]


def test_negative_split_ties_go_to_the_positive():
    coords = np.array([[0, 0], [0, 1], [0, 2], [0, 3], [0, 4]])
    # negative at column 4, positive at column 0: column 2 is equally near (a tie) and stays
    assert nearer_to_negative(coords, (0, 4), [(0, 0)]).tolist() == [False, False, False, True, True]
    assert nearer_to_negative(coords, (0, 4), []).all()
    # a negative on the positive's own voxel cuts nothing
    assert not nearer_to_negative(coords, (0, 0), [(0, 0)]).any()


def test_negative_cut_takes_the_object_or_the_nearer_part():
    mask = np.zeros((1, 9, 9), bool)
    mask[0, 1:4, 1:4] = True  # object A
    mask[0, 5:8, 1:8] = True  # object B
    whole = negative_cut(mask, (0, 2, 2), [(0, 6, 1)])  # A holds no positive: all of A goes
    assert (whole == (mask & (np.arange(9)[None, :, None] < 4))).all()
    part = negative_cut(mask, (0, 6, 7), [(0, 6, 1)])  # B's columns strictly nearer to column 7 than 1
    expected = np.zeros_like(mask)
    expected[0, 5:8, 5:8] = True  # columns 5..7 (column 4 is a tie: kept)
    assert (part == expected).all()
    assert not negative_cut(mask, (0, 0, 0), []).any()  # outside the mask: nothing


def test_capabilities_are_declared_on_the_types():
    from samadapt3d.families.litemedsam import LiteMedSAM
    from samadapt3d.families.med_sa import MedSAModel
    from samadapt3d.families.sam3d.model import SAM3DAdapter
    from samadapt3d.families.samed import SAMedModel

    assert issubclass(SAM3DAdapter, CropModel) and SAM3DAdapter.engine == "crop"
    assert SAM3DAdapter.prompt_kinds == {"positive"}
    assert LiteMedSAM.engine == "slices" and LiteMedSAM.prompt_kinds == {"box"} and LiteMedSAM.slice_context == 0
    assert MedSAModel.engine == "slab" and {"positive", "negative"} <= MedSAModel.prompt_kinds
    assert SAMedModel.engine == "slab" and SAMedModel.prompt_kinds == frozenset()
    assert issubclass(LiteMedSAM, SliceModel)


def test_default_model_is_one_constant():
    import pathlib
    import samadapt3d
    from samadapt3d.models import DEFAULT_MODEL, builtin_model_names

    assert DEFAULT_MODEL in builtin_model_names()
    root = pathlib.Path(samadapt3d.__file__).parent
    users = [root / "session.py", root / "demo.py", root / "cli.py", *(root / "engines").glob("*.py"),
             *(root / "evaluate").glob("*.py")]
    offenders = [p.name for p in users if 'load_model("litemedsam"' in p.read_text() or '"litemedsam"' in p.read_text()]
    assert offenders == []
