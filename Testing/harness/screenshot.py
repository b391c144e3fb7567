"""Regenerate Resources/Screenshot.png from what really runs (no drawing of a Slicer window):

- left: the real SAMAdapt3D module panel (SAMAdapt3D.ui loaded by the harness, rendered offscreen by Qt) and the
  real options panel of the SAMAdapt3D Segment Editor effect;
- right: axial and coronal slices of the slicerio chest CT with the segments the effect wrote after one click each
  (clicks sent through the effect's slice-view handler to the real embedded LiteMedSAM, results written through
  the segment editor logic), drawn with numpy / QPainter and labelled as such.

    python Testing/harness/screenshot.py [--out Resources/Screenshot.png]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1] / "SAMAdapt3D")]

CLICKS = {"right lung": (87, 51, 12), "left lung": (34, 61, 10)}  # (i, j, k), as in `samadapt3d demo`
COLORS = {"right lung": (22, 197, 71), "left lung": (197, 25, 99)}
PANEL_WIDTH = 420


def add_ct(scene, volume):
    import vtk
    from vtk.util import numpy_support

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CTChest")
    image = vtk.vtkImageData()
    k, j, i = volume.array.shape
    image.SetDimensions(i, j, k)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = volume.array.astype(np.int16).ravel()
    node.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    ijk_to_ras = volume.ijk_to_ras_matrix()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijk_to_ras[r, c]))
    node.SetIJKToRASMatrix(matrix)
    node.CreateDefaultDisplayNodes()
    return node


def segment_with_the_effect(gui, scene, ct):
    """One click per structure through the effect; returns {name: mask [k, j, i]} read back from the scene."""
    import vtk

    from harness import scenes
    from harness.fixtures import MODULE_DIR, effect_idle, wait_for
    from harness.mrml_widgets import SliceViewWidget
    from samadapt3d import load_model
    from samadapt3d.session import InteractiveSession
    from SAMAdapt3DSlicerLib import effect_session

    gui.load_module(MODULE_DIR / "SegmentEditorSAMAdapt3D.py")
    gui.start_up()
    model = load_model("litemedsam", device="cpu")
    effect_session.set_session_opener(lambda name, device: InteractiveSession(model))
    segmentation, ids = scenes.add_segmentation(scene, ct, names=tuple(CLICKS))
    editor = gui.segment_editor()
    editor.set_segmentation(segmentation)
    editor.set_source_volume(ct)
    view = SliceViewWidget(scene, "Red", "Axial")
    masks, seconds = {}, {}
    effect = None
    for name, segment_id in zip(CLICKS, ids):
        editor.select_segment(segment_id)
        effect = editor.activate("SAMAdapt3D").self()
        wait_for(gui, effect_idle(effect), timeout=600)
        i, j, k = CLICKS[name]
        ras = scenes.voxel_to_ras(ct, (k, j, i))
        view.fit_to(ct, offset_ras=ras[2])
        xy = view.ras_to_xy(ras)
        start = time.monotonic()
        editor.interact(view, vtk.vtkCommand.LeftButtonPressEvent, *xy)
        editor.interact(view, vtk.vtkCommand.LeftButtonReleaseEvent, *xy)
        wait_for(gui, effect_idle(effect), timeout=600)
        seconds[name] = time.monotonic() - start
        masks[name] = scenes.segment_array(segmentation, segment_id, ct)
        print(f"{name}: {int(masks[name].sum())} voxels, click -> segment {seconds[name]:.1f} s ({effect.lastStatus})")
    return masks, seconds, effect


def slice_image(ct_array, masks, plane: str, index: int, aspect: float):
    """An RGB rendering (numpy) of one CT slice with the masks blended in; rows scaled to mm."""
    from PySide6 import QtGui

    window = (-1000.0, 400.0)
    # this CT's i runs toward the patient's right and j toward anterior (LPS directions -x, -y), k superior: flip
    # them for the radiological view (patient right on the screen's left, anterior / head up)
    if plane == "axial":
        gray, overlays = ct_array[index][::-1, ::-1], {n: m[index][::-1, ::-1] for n, m in masks.items()}
    else:
        gray = ct_array[:, index, :][::-1, ::-1]
        overlays = {n: m[:, index, :][::-1, ::-1] for n, m in masks.items()}
    gray = np.clip((gray - window[0]) / (window[1] - window[0]), 0, 1)
    rgb = np.repeat((gray * 255)[..., None], 3, axis=2)
    for name, mask in overlays.items():
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.array(COLORS[name])
    rgb = np.ascontiguousarray(rgb.astype(np.uint8))
    h, w, _ = rgb.shape
    image = QtGui.QImage(rgb.data, w, h, 3 * w, QtGui.QImage.Format_RGB888).copy()
    return image.scaled(int(w * 3), int(h * 3 * aspect))


def compose(panel, options, axial, coronal, seconds, out: Path) -> None:
    from PySide6 import QtCore, QtGui

    margin, caption_h, title_h = 12, 64, 40
    left_w = max(panel.width(), options.width())
    right_w = max(axial.width(), coronal.width())
    width = margin * 3 + left_w + right_w
    left_h = panel.height() + options.height() + 2 * (caption_h + margin)
    right_h = axial.height() + coronal.height() + 2 * (caption_h + margin)
    canvas = QtGui.QImage(width, title_h + max(left_h, right_h) + margin, QtGui.QImage.Format_RGB888)
    canvas.fill(QtGui.QColor(246, 246, 246))
    painter = QtGui.QPainter(canvas)
    font = painter.font()
    font.setPointSize(9)
    painter.setFont(font)

    def text(x, y, w, h, caption, bold=False):
        font.setBold(bold)
        painter.setFont(font)
        painter.drawText(QtCore.QRect(x, y, w, h), QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter | QtCore.Qt.TextWordWrap,
                         caption)

    def block(image, x, y, w, caption):
        text(x, y, w, caption_h, caption)
        painter.drawImage(x, y + caption_h, image)
        return y + caption_h + image.height() + margin

    text(margin, 0, width - 2 * margin, title_h, "SAMAdapt3D: renderings of the real module and effect code (offscreen Qt, "
         "test harness) and of CT slices with real LiteMedSAM masks. Not a screenshot of a Slicer window.", bold=True)
    y = block(panel, margin, title_h, left_w, "SAMAdapt3D module panel: the real SAMAdapt3D.ui and SAMAdapt3D.py, "
              "rendered offscreen by Qt in the test harness")
    block(options, margin, y, left_w, "Segment Editor > SAMAdapt3D effect options (the real effect code, offscreen)")
    x = 2 * margin + left_w
    clicks = ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items())
    y = block(axial, x, title_h, right_w, "slicerio CTChest, axial: one click per lung through the effect, masks from "
              f"the embedded LiteMedSAM ({clicks}, loaded 2-core CPU); numpy rendering, not a Slicer view")
    block(coronal, x, y, right_w, "the same segments, coronal slice (numpy rendering)")
    painter.end()
    canvas.save(str(out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE.parents[1] / "Resources" / "Screenshot.png"))
    args = parser.parse_args(argv)

    import slicer

    from harness import Slicer
    from harness.fixtures import MODULE_DIR
    from samadapt3d.demo import load_demo_case

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    gui = Slicer(scene, Path(tempfile.mkdtemp()))
    try:
        volume, _ = load_demo_case()
        ct = add_ct(scene, volume)
        module = gui.load_module(MODULE_DIR / "SAMAdapt3D.py")
        masks, seconds, effect = segment_with_the_effect(gui, scene, ct)
        panel_widget = module.parent_widget
        panel_widget.resize(PANEL_WIDTH, panel_widget.sizeHint.height())
        panel_widget.show()
        options = effect.scriptedEffect.optionsFrame()
        options.resize(PANEL_WIDTH, options.sizeHint.height())
        options.show()
        gui.pump(0.2)
        panel = panel_widget.grab().toImage()
        options_image = options.grab().toImage()
        k = CLICKS["right lung"][2]
        j = CLICKS["right lung"][1]
        spacing = volume.spacing
        axial = slice_image(volume.array, masks, "axial", k, spacing[1] / spacing[0])
        coronal = slice_image(volume.array, masks, "coronal", j, spacing[2] / spacing[0])
        compose(panel, options_image, axial, coronal, seconds, Path(args.out))
        print(f"wrote {args.out}")
    finally:
        gui.close()
        logic.SetMRMLScene(None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
