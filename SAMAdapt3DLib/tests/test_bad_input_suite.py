"""The test suite's own honesty: a missing oracle / wheel / data skips locally but fails the run in CI."""
import pytest

from ci_requirements import import_segment_anything, missing, require_module


@pytest.mark.parametrize("ci, outcome", [(None, pytest.skip.Exception), ("true", pytest.fail.Exception),
                                         ("1", pytest.fail.Exception), ("false", pytest.skip.Exception)])
def test_missing_dependency_skips_locally_and_fails_in_ci(monkeypatch, ci, outcome):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="samadapt3d_no_such_module"):
        require_module("samadapt3d_no_such_module", "it never is")
    with pytest.raises(outcome, match="the wheel"):
        missing("the wheel has no weight file")


def test_segment_anything_oracle_fails_in_ci_when_absent(monkeypatch):
    import importlib.util
    import sys

    monkeypatch.setenv("CI", "true")
    monkeypatch.delitem(sys.modules, "segment_anything.build_sam", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(pytest.fail.Exception, match="segment-anything"):
        import_segment_anything()
    assert require_module("json", "stdlib").dumps([1]) == "[1]"
