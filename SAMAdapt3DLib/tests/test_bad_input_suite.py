"""The test suite's own honesty: a missing oracle / wheel / data skips locally but fails the run in CI."""
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
NEEDS_MISSING = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from ci_requirements import require_module


def test_needs_a_module_that_is_not_installed():
    require_module("samadapt3d_no_such_module", "it never is")
"""


def _run(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    test = tmp_path / "test_needs.py"
    test.write_text(NEEDS_MISSING)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                           str(tmp_path), str(test)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


def test_missing_dependency_skips_locally_and_fails_in_ci(tmp_path):
    local = _run(tmp_path, None)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    ci = _run(tmp_path, "true")
    assert ci.returncode == 1 and "1 failed" in ci.stdout and "required in CI" in ci.stdout, ci.stdout
