"""The click-time plot script (samadapt3d.runtime.click_plot): warm clicks land inside the structure, away from its
edge; the plot reads every CSV given and draws one line per model."""
import csv

import numpy as np
import pytest

from samadapt3d.runtime import click_plot


def test_random_clicks_are_inside_and_off_the_edge():
    mask = np.zeros((6, 9, 9), bool)
    mask[1:5, 2:8, 1:6] = True
    rng = np.random.default_rng(0)
    for _ in range(50):
        i, j, k = click_plot._inside(mask, rng)
        for dk, dj, di in ((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
            assert mask[k + dk, j + dj, i + di]


def test_plot_draws_every_model_of_every_csv(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    files = []
    for model, seconds in (("A", [30.0, 2.0, 1.5]), ("B", [100.0, 20.0])):
        path = tmp_path / f"{model}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=click_plot.FIELDS)
            writer.writeheader()
            for n, s in enumerate(seconds, 1):
                writer.writerow({"model": model, "click": n, "seconds": s, "cpu_seconds": s / 10, "what": "x",
                                 "load_average": 1.0})
        files.append(path)
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, x, y, **kw: (drawn.append((kw["label"], list(x), list(y))), original(self, x, y, **kw))[1])
    out = tmp_path / "clicks.png"
    click_plot.plot(files, out, "t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn == [("A: wall", [1, 2, 3], [30.0, 2.0, 1.5]), ("A: CPU", [1, 2, 3], [3.0, 0.2, 0.15]),
                     ("B: wall", [1, 2], [100.0, 20.0]), ("B: CPU", [1, 2], [10.0, 2.0])]


def test_the_3dsam_series_runs_the_encoder_once_per_crop_and_writes_every_click(tmp_path):
    """The 3DSAM-adapter series on the slicerio CT, with the tiny network standing in for the full one: a row per
    click; the first click on each lung runs the encoder, the further clicks share its crop and find it cached."""
    # the right lung's further clicks are drawn inside its first click's crop
    pytest.importorskip("slicerio")
    from samadapt3d.families.sam3d import Sam3DAdapterConfig

    out = tmp_path / "sam3d.csv"
    rows = click_plot.measure(out, "auto", 1, model_name="sam3d-random", follow=2,
                              sam3d_config=Sam3DAdapterConfig.tiny())
    with open(out, newline="") as f:
        written = list(csv.DictReader(f))
    assert len(rows) == len(written) == 2 * 3
    assert [r["click"] for r in written] == [str(n) for n in range(1, 7)]
    assert all(float(r["seconds"]) > 0 for r in written)
    assert written[0]["what"].startswith("right lung: click 1") and written[0]["what"].endswith("encoder run")
    assert written[3]["what"].startswith("left lung: click 1") and written[3]["what"].endswith("encoder run")
    for r in written[1:3]:  # (the tiny network's 32 mm crop around the left lung's click holds no core voxel)
        assert r["what"].endswith("encoder cached")
