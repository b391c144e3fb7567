"""Overlays: radiological convention whatever the file's direction, a CT window, every prompt drawn, a legend.

Where a structure must appear is worked out from anatomy (patient left = +L in LPS), not from the overlay code: a
blob placed on the patient's left must show on the image's right in the axial and coronal panels, one placed
anteriorly must show at the top of the axial panel."""
import numpy as np
import pytest

from samadapt3d.overlay import BOX_RGB, LEGEND_ROW, NEGATIVE_RGB, POSITIVE_RGB, Layer, choose_window, render_views
from samadapt3d.volume import Volume

SHAPE = (12, 20, 24)  # k, j, i


def volume_with_blob(direction, where_lps):
    """A CT-like volume (air, body at 40 HU, a bone voxel) with a 3x3x3 blob at the LPS point `where_lps`."""
    array = np.full(SHAPE, -1000.0, np.float32)
    array[1:-1, 2:-2, 2:-2] = 40.0
    array[0, 0, 0] = 1000.0  # some bone: a CT, shown in the soft-tissue window
    vol = Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), direction)
    i, j, k = (int(round(v)) for v in vol.physical_to_index(where_lps, "lps"))
    mask = np.zeros(SHAPE, bool)
    mask[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2] = True
    return vol, mask, (i, j, k)


def changed_centroid(vol, mask, ijk, view):
    """(x, y) in [0, 1] of the pixels that the mask changes, relative to the body's extent in `view`'s panel."""
    with_mask = render_views(vol, [Layer(mask, (255, 0, 0), "blob")], ijk)
    without = render_views(vol, [Layer(np.zeros_like(mask), (255, 0, 0), "blob")], ijk)
    a, b = (np.asarray(img.convert("RGB"), dtype=int) for img in (with_mask, without))
    diff = np.abs(a - b).sum(axis=2) > 0
    x0, x1, y0, y1 = _body_boxes(b)[("axial", "coronal", "sagittal").index(view)]
    ys, xs = np.nonzero(diff[y0:y1, x0:x1])
    assert xs.size, view
    return xs.mean() / (x1 - x0), ys.mean() / (y1 - y0)


def _body_boxes(rgb):
    """(x0, x1, y0, y1) of the body (40 HU, mid grey in the soft-tissue window) in each of the three panels."""
    r, g, bl = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    body = (np.abs(r - g) < 4) & (np.abs(g - bl) < 4) & (r > 60) & (r < 200)
    cols = np.flatnonzero(body.any(axis=0))
    runs, start = [], cols[0]
    for prev, cur in zip(cols[:-1], cols[1:]):
        if cur - prev > 1:
            runs.append((start, prev + 1))
            start = cur
    runs.append((start, cols[-1] + 1))
    runs = [(x0, x1) for x0, x1 in runs if x1 - x0 > 40]  # panels, not the grey edges of the lettering
    assert len(runs) == 3, runs
    boxes = []
    for x0, x1 in runs:
        rows = np.flatnonzero(body[:, x0:x1].sum(axis=1) > (x1 - x0) // 3)
        boxes.append((x0, x1, rows[0], rows[-1] + 1))
    return boxes


DIRECTIONS = {"LPS identity": np.eye(3), "RAS-like (as the slicerio CT)": np.diag([-1.0, -1.0, 1.0]),
              "axes swapped": np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])}


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_patient_left_is_on_the_image_right_and_anterior_up(direction):
    centre = Volume(np.zeros(SHAPE), (1.0, 1.0, 2.0), (0, 0, 0), direction).index_to_physical(
        np.array(SHAPE[::-1]) / 2 - 0.5, "lps")
    left = centre + [6.0, 0, 0]  # +L: the patient's left
    vol, mask, ijk = volume_with_blob(direction, left)
    x, _ = changed_centroid(vol, mask, ijk, "axial")
    assert x > 0.6
    x, _ = changed_centroid(vol, mask, ijk, "coronal")
    assert x > 0.6
    anterior = centre + [0, -5.0, 0]  # -P: anterior
    vol, mask, ijk = volume_with_blob(direction, anterior)
    _, y = changed_centroid(vol, mask, ijk, "axial")
    assert y < 0.4
    x, _ = changed_centroid(vol, mask, ijk, "sagittal")
    assert x < 0.4  # sagittal: anterior on the left
    superior = centre + [0, 0, 6.0]
    vol, mask, ijk = volume_with_blob(direction, superior)
    _, y = changed_centroid(vol, mask, ijk, "coronal")
    assert y < 0.4


def test_ct_window_soft_tissue_and_lung():
    ct = np.array([-1000.0, 40.0, 1000.0, 3000.0])
    assert choose_window(ct) == (-160.0, 240.0)  # W400 / L40
    lung = np.array([True, False, False, False])
    assert choose_window(ct, [lung]) == (-1350.0, 150.0)  # W1500 / L-600 for an air-filled structure
    mri = np.linspace(0, 1000, 101)
    assert choose_window(mri) == (10.0, 990.0)  # not CT: 1st..99th percentile


def test_every_prompt_and_the_box_are_drawn():
    vol, mask, (i, j, k) = volume_with_blob(np.eye(3), [12.0, 10.0, 12.0])
    prompts = [("positive", (i, j, k)), ("negative", (4, 15, k + 3))]  # the negative is on another axial slice
    box = ((3, 3, k - 2), (i + 3, j + 3, k + 2))
    sheet = np.asarray(render_views(vol, [Layer(mask, (255, 0, 0), "blob")], (i, j, k), prompts, box).convert("RGB"))
    body = sheet[: sheet.shape[0] - (6 + LEGEND_ROW)]
    for colour in (POSITIVE_RGB, NEGATIVE_RGB, BOX_RGB):
        assert (np.abs(body.astype(int) - colour).sum(axis=2) < 30).sum() >= 10, colour
    plain = np.asarray(render_views(vol, [Layer(mask, (255, 0, 0), "blob")], (i, j, k)).convert("RGB"))
    assert not (np.abs(plain[: plain.shape[0] - (6 + LEGEND_ROW)].astype(int) - NEGATIVE_RGB).sum(axis=2) < 30).any()


def test_demo_legend_names_each_structure_with_its_dice():
    from samadapt3d.demo import overlay_layers

    masks = {"left lung": np.ones((2, 2, 2), bool), "ribs": np.zeros((2, 2, 2), bool)}
    layers = overlay_layers(masks, {"left lung": 0.9234, "ribs": float("nan")})
    assert [layer.label for layer in layers] == ["left lung  Dice 0.923", "ribs"]
    assert len({layer.rgb for layer in layers}) == 2
