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
