"""`samadapt3d evaluate`: the CVPR 2025 "Foundation Models for Interactive 3D Biomedical Image Segmentation"
protocol (a box, then 5 corrective clicks; Dice, NSD, DSC_AUC / NSD_AUC) for any model through the session.

    samadapt3d evaluate --data cases.csv --out eval_out [--model litemedsam|FILE] [--clicks-only]

See evaluate.protocol (the prompts), evaluate.metrics, evaluate.report (outputs) and docs/EVALUATE.md.
"""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main

    return cli_main(argv)


__all__ = ["main"]
