"""Scene writes of model results, Qt-free (tested headless against slicer-core): a mask into a segment with the
Segment Editor's masking / overwrite settings, and a multi-class label map as one segment per class, with undo.

Models run elsewhere: the Segment Editor effect's session and "Segment all classes" go through the inference
server (samadapt3d.client); this file never imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import slicer

from SAMAdapt3DSlicerLib import scene_bridge as bridge


def write_result(mask, volume_node, segmentation_node, segment_id, editor_settings=None):
    """Write a mask to the segment with the Segment Editor's masking / overwrite settings (a dict with
    mask_mode, mask_segment_id, overwrite_mode, intensity_range, or a vtkMRMLSegmentEditorNode)."""
    settings = dict(mask_mode=bridge.MASK_EVERYWHERE, mask_segment_id="", overwrite_mode=bridge.OVERWRITE_NONE,
                    intensity_range=None)
    if isinstance(editor_settings, slicer.vtkMRMLSegmentEditorNode):
        node = editor_settings
        settings.update(mask_mode=node.GetMaskMode(), mask_segment_id=node.GetMaskSegmentID() or "",
                        overwrite_mode=node.GetOverwriteMode())
        if node.GetSourceVolumeIntensityMask():
            settings["intensity_range"] = tuple(node.GetSourceVolumeIntensityMaskRange())
    elif editor_settings:
        settings.update(editor_settings)
    return bridge.write_segment_mask(segmentation_node, segment_id, mask, volume_node, **settings)


@dataclass
class ClassWrite:
    """What `write_classes` did, enough to undo it."""
    written: dict  # class name -> (segment id, voxels, created)
    snapshot: dict  # segment id -> mask before the write (segments that existed)

    @property
    def created(self) -> list:
        return [sid for sid, _, created in self.written.values() if created]

    def summary(self) -> str:
        found = [f"{name} ({voxels})" for name, (_, voxels, _) in self.written.items() if voxels]
        empty = [name for name, (_, voxels, _) in self.written.items() if not voxels]
        text = f"{len(found)} class segment(s): " + ", ".join(found) if found else "No class found in this volume."
        return text + (f"; emptied: {', '.join(empty)}" if empty else "")


def write_classes(labels, names, volume_node, segmentation_node) -> ClassWrite:
    """One segment per class name (created or replaced by name), remembering the old voxels for `undo_classes`."""
    from samadapt3d.automatic import class_colour

    existing = [sid for sid in (bridge.segment_id_by_name(segmentation_node, n) for n in names) if sid]
    snapshot = bridge.snapshot_segments(segmentation_node, volume_node, existing)
    colors = [class_colour(n) for n in range(len(names))]
    written = bridge.write_class_segments(segmentation_node, volume_node, labels, names, colors)
    return ClassWrite(written, snapshot)


def undo_classes(write: ClassWrite, volume_node, segmentation_node) -> None:
    bridge.restore_segments(segmentation_node, volume_node, write.snapshot, write.created)
