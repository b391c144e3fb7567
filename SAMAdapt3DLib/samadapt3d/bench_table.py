"""The benchmarks' output: one `name  value` row a line, names padded to one column (docs/BENCHMARKS.md quotes it)."""
from __future__ import annotations

from typing import Sequence


def print_rows(rows: Sequence[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
