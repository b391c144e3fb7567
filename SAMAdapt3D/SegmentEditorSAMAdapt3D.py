"""SegmentEditorSAMAdapt3D: a hidden module whose only job is to register the SAMAdapt3D Segment Editor effect.

Slicer loads every .py file beside SAMAdapt3D.py as a scripted module; this one is a proper (hidden) module, as
the modules of SegmentEditorExtraEffects are: once the application has started it registers the effect, whose code
is SAMAdapt3DSlicerLib/effect.py (loaded through SegmentEditorSAMAdapt3DLib/SegmentEditorEffect.py). Nothing is imported or installed before that (torch never in Slicer's process).
"""
from __future__ import annotations

import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

#: Slicer loads this file as the module "SegmentEditorSAMAdapt3DLib" (its folder) and instantiates its class
#: "SegmentEditorEffect" (its name); the effect's code is SAMAdapt3DSlicerLib/effect.py
EFFECT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "SegmentEditorSAMAdapt3DLib",
                             "SegmentEditorEffect.py")


class SegmentEditorSAMAdapt3D(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegmentEditorSAMAdapt3D"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["SAMAdapt3D developers"]
        self.parent.hidden = True
        self.parent.helpText = "Registers the SAMAdapt3D effect in the Segment Editor."
        self.parent.acknowledgementText = "Registration follows the SegmentEditorExtraEffects extension."
        slicer.app.connect("startupCompleted()", registerEffect)


def registerEffect():
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    effect = effects.qSlicerSegmentEditorScriptedEffect(None)
    effect.setPythonSource(EFFECT_SOURCE.replace("\\", "/"))
    effect.self().register()
