"""The first-click study's re-oriented copy (issue 16, part 2) is the same physical scan. The random-click test on
the real CT lives in test_litemedsam.py, which shares one embedded engine."""
import numpy as np

from ci_requirements import require_module

require_module("slicerio", "pip install slicerio")

from samadapt3d.demo import load_demo_case  # noqa: E402


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
