"""The two test folders (SAMAdapt3DLib/tests, Testing) run in one pytest session and each has a conftest.py: a test that
imports `from conftest` gets whichever was imported first, so shared helpers live in uniquely named modules."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_test_module_imports_from_conftest():
    offenders = [str(p.relative_to(ROOT)) for folder in ("SAMAdapt3DLib/tests", "Testing")
                 for p in (ROOT / folder).rglob("*.py")
                 if re.search(r"^\s*(from conftest import|import conftest)", p.read_text(), re.M)]
    assert not offenders, offenders
