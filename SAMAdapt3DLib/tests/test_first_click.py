"""One click anywhere deep inside a lung gives the lung (issue 16, part 2), on the real slicerio chest CT with
LiteMedSAM through the session: 3 seeded random clicks (a seed the study in docs/LITEMEDSAM.md does not use)
among the voxels of the left lung eroded 3 times, one click per fresh session state."""
import numpy as np
import pytest

from ci_requirements import missing, require_module
from samadapt3d.families import litemedsam

require_module("slicerio", "pip install slicerio")

from samadapt3d.demo import dice, load_demo_case  # noqa: E402
from samadapt3d.errors import ModelNotFoundError  # noqa: E402
from samadapt3d.evaluate.first_click import clicks_in  # noqa: E402
from samadapt3d.models import load_model  # noqa: E402
from samadapt3d.session import InteractiveSession  # noqa: E402

#: the study's minimum over 60 clicks per lung (seeds 2026 and 7, and the re-oriented copy) is 0.868, all others
#: >= 0.909 (docs/LITEMEDSAM.md); this leaves room for numerical drift across machines, and is far above the
#: 0.00-0.30 that a third of the clicks gave before (a part of the lung, or nothing)
MIN_DICE = 0.85


@pytest.fixture(scope="module")
def session():
    try:
        litemedsam.wheel_checkpoint_path()
    except ModelNotFoundError as exc:
        missing(str(exc))
    s = InteractiveSession(load_model("litemedsam"))
    return s


def test_three_random_deep_clicks_each_give_the_left_lung(session):
    volume, truth = load_demo_case()
    session.set_image(volume)
    lung = truth["left lung"]
    for kji in clicks_in(lung, erosion=3, count=3, seed=31):
        session.reset()
        mask = np.asarray(session.add_point((int(kji[2]), int(kji[1]), int(kji[0]))))
        assert mask[tuple(kji)]
        assert dice(mask, lung) >= MIN_DICE, f"click {tuple(kji[::-1])}"


def test_study_copy_is_the_same_physical_scan_and_labels():
    """The study's re-oriented copy (issue recipe: PermuteAxes [1, 2, 0], Flip [True, False, True]): every voxel of
    the copy holds the CT value and labels found at the same physical point of the stored scan."""
    from samadapt3d.evaluate.first_click import reoriented_copy

    volume, truth = load_demo_case()
    copy, labels = reoriented_copy(volume, {"left lung": truth["left lung"]})
    assert copy.array.shape != volume.array.shape  # really stored differently
    rng = np.random.default_rng(5)
    ijk = np.stack([rng.integers(0, n, 200) for n in copy.size_ijk], axis=1)
    back = np.rint(volume.physical_to_index(copy.index_to_physical(ijk.astype(float)))).astype(int)
    np.testing.assert_array_equal(copy.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]],
                                  volume.array[back[:, 2], back[:, 1], back[:, 0]])
    np.testing.assert_array_equal(labels["left lung"][ijk[:, 2], ijk[:, 1], ijk[:, 0]],
                                  truth["left lung"][back[:, 2], back[:, 1], back[:, 0]])
