"""The file Slicer's effect loader is given (qSlicerSegmentEditorScriptedEffect.setPythonSource): it loads a file
as the module named after its folder (SegmentEditorSAMAdapt3DLib) and instantiates the class named after the file
(SegmentEditorEffect), as for SegmentEditorExtraEffects. The effect itself is SAMAdapt3DSlicerLib/effect.py; a
file there would be loaded as the module "SAMAdapt3DSlicerLib" and replace that package."""
from SAMAdapt3DSlicerLib.effect import SegmentEditorEffect

__all__ = ["SegmentEditorEffect"]
