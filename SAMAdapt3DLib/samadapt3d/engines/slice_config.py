"""Every threshold of the slice engine's click / propagation strategy, in one place (engines/slice_objects.py, engines/slice_strategy.py)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SliceConfig:
    """Thresholds of SliceEngine (see the docstrings of engines/slice_objects.py and slice_strategy.py for where each one acts)."""

    #: a propagated slice is prompted with its neighbour's mask box grown by this fraction of its longer side
    box_margin: float = 0.1
    #: a click's candidate boxes are refitted to their own mask with this margin
    refit_margin: float = 0.15
    #: propagation stops at a mask smaller than this (pixels)
    min_area: int = 4
    #: ... at a mask overlapping its neighbour's (dilated by 2 px) by less than this fraction of itself
    min_overlap: float = 0.2
    #: ... at a predicted IoU below this
    min_iou: float = 0.35
    #: ... where the median normalised intensity moved by more than this from the anchor's (another tissue)
    max_level_change: float = 0.12
    #: inside a 3D box, only an empty mask or no overlap stops the walk (measured: leaks; off)
    box_keeps_walking: bool = False
    #: candidate box half-sizes around a click, as fractions of the slice's longer side
    click_box_fractions: tuple[float, ...] = (0.03, 0.06, 0.09, 0.125, 0.16, 0.19, 0.23, 0.28, 0.34)
    #: rounds of refitting each candidate box to its own mask
    click_rounds: int = 4
    #: pixels whose intensity is within this of the click's count as "homogeneous" in the candidate score
    homogeneity_tolerance: float = 0.1
    #: a click's intensity level: the median of the pixels within this radius (px) of it (a vessel reads its organ)
    level_radius: int = 2
    #: a click's candidates include the box of the similar-intensity region around it (below)
    region_candidate: bool = True
    #: the similar-intensity region around a click is split at necks narrower than 2 x this fraction of the slice's
    #: longer side (two organs joined by a duct); its box is one more candidate
    region_neck: float = 0.03
    #: a candidate's score is weighted by (1 - w) + w x its Dice with the click's region (the object the click's
    #: intensity outlines), w this
    region_weight: float = 0.5
    #: an anchor whose Dice with the click's region is at least this is an object of uniform intensity: ...
    uniform_agreement: float = 0.8
    #: ... its propagation stops (and retries) where less than this fraction of the mask has its intensity
    #: (holes filled): the mask has leaked into a neighbour
    uniform_inside: float = 0.85
    #: an object of uniform intensity (a lung) whose model mask turns into another tissue goes on as its own
    #: intensity near the previous slice's mask, never larger than it (a lung's base around the liver's dome)
    uniform_continuation: bool = True
    #: a box's object (not of uniform intensity) whose model mask takes in another tissue goes on as the part of
    #: that mask at its own level (a body's mask holds the lungs on the chest's slices)
    level_continuation: bool = True
    #: ... when what that part leaves out lies at least this far from the object's level (air beside soft
    #: tissue, ~0.37 on CT; not the bone beside a vertebra's muscle, ~0.18)
    level_part_contrast: float = 0.3
    #: a propagation stop (low IoU, no overlap, another tissue) is retried once with the box of the
    #: similar-intensity region overlapping the previous mask (without a 3D box only: inside one it made corrective
    #: clicks of the CVPR 2025 protocol lower Dice by up to 0.15)
    retry_stops: bool = True
    #: a negative's "unlike part" (another tissue taken into the mask) may be up to this fraction of the mask's
    #: component on its slice (a box's mask may be mostly the muscle around a vertebra); more: the object itself
    unlike_max_share: float = 0.75
    #: ... and holds only pixels within this of the negative's level (a tissue's own spread; 0.035 of a CT slice's
    #: range is ~90 HU: muscle, not the marrow beside it)
    unlike_tolerance: float = 0.035
    #: a negative's appearance cut, followed through slices, may grow by at most this factor from one slice to the
    #: next (the muscle around a vertebra changes its area from slice to slice; more: the object's own tissue)
    cut_taper: float = 1.45
    #: ... and must lie at least this fraction on the previous slice's cut (a cut started on muscle at one
    #: vertebra otherwise walked into the marrow of the next ones)
    cut_overlap: float = 0.5
    #: a negative click's object: the smallest candidate scoring at least this fraction of the best one
    negative_score_ratio: float = 0.5
    #: a negative's object covering at least this fraction of the mask's component is the same object
    same_object: float = 0.5
    #: an excluded object (another structure inside the mask) is cut dilated by this many pixels
    cut_dilation: int = 1
    #: a shrunk box stops this many pixels before a negative click (cuts of one object by the model)
    shrink_gap: int = 1
    #: a positive click outside the mask but within this fraction of the slice's longer side of a mask component
    #: corrects that component: its slice is re-prompted with the box of component + click
    extend_reach: float = 0.25
    #: a positive click's object may reach this fraction of the box's longer side beyond the box's in-plane extent
    #: (the protocol's box bounds one slice; the box's slices still bound)
    correction_reach: float = 0.25
    #: a positive click on a slice without mask, at most this many slices from one with mask, re-opens the walk
    #: there (prompted with that slice's mask box plus the click)
    end_reach: int = 3
    #: a correction's walk through slices the mask holds stops where it adds less than this fraction of the mask...
    correction_min_gain: float = 0.05
    #: ... or more than this fraction (a leak into a neighbour)
    correction_max_gain: float = 0.25
    #: past the mask's end, a correction's slices may not exceed this multiple of the last masked slice's area
    end_taper: float = 1.0
    #: every positive object's boundary is re-decided by intensity in a band this many slice pixels wide on each
    #: side of it (engines/slice_appearance.py; 0: off)...
    appearance_band: int = 2
    #: ... widened for a large object to this fraction of the square root of its median slice area (a boundary
    #: drawn at the model's scale is off by more pixels on a larger object), up to `appearance_band_max`
    appearance_band_share: float = 1 / 11
    appearance_band_max: int = 5
    #: ... where the object's histograms tell its core from its far ring with at least this balanced accuracy
    #: (0.5: chance; above 1: never)
    appearance_separation: float = 0.75
