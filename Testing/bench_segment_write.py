"""Time of one own-grid segment write (docs/BENCHMARKS.md): python Testing/bench_segment_write.py"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SAMAdapt3D"))
import numpy as np  # noqa: E402
import slicer  # noqa: E402
from SAMAdapt3DSlicerLib import scene_bridge as bridge
from samadapt3d.volume import Volume
scene = slicer.vtkMRMLScene(); lg = slicer.vtkSlicerSegmentationsModuleLogic(); lg.SetMRMLScene(scene)
for label, scale in (("same grid", 1.0), ("2x finer grid", 0.5)):
    shape = (100, 256, 256)
    vol = Volume(np.zeros(shape, np.int16), spacing=(1.0, 1.0, 2.0))
    node = bridge.volume_to_node(vol, scene, "v")
    fshape = tuple(int(s / scale) for s in shape)
    ref = Volume(np.zeros(fshape, np.uint8), spacing=tuple(np.array([1.0, 1.0, 2.0]) * scale), origin=tuple(vol.origin - (0 if scale == 1 else 0.25 * np.array([1, 1, 2]))))
    refnode = bridge.volume_to_node(ref, scene, "ref")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode"); seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(refnode)
    ids = [bridge.add_segment(seg, f"s{n}") for n in range(4)]
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    for n, sid in enumerate(ids[1:]):
        m = (k - 50) ** 2 / 4 + (j - 60 - 60 * n) ** 2 + (i - 128) ** 2 <= 30 ** 2
        bridge.write_segment_mask(seg, sid, m, node)
    times = []
    for r in range(5):
        mask = (k - 50) ** 2 / 4 + (j - 128) ** 2 + (i - 128) ** 2 <= (40 + r) ** 2
        t = time.perf_counter(); bridge.write_segment_mask(seg, ids[0], mask, node); times.append(time.perf_counter() - t)
    print(f"{label}: volume {shape[::-1]} (i,j,k), segmentation grid {fshape[::-1]}, 4 segments: write median {np.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}) over 5 writes; nodes {scene.GetNumberOfNodes()}")
