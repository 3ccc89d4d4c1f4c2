"""conftest.py: under CI a skipped oracle test (or a skipped test module) fails the run."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

ORACLE = """
import pytest

@pytest.mark.oracle
def test_against_missing_oracle():
    pytest.importorskip("fasttape_no_such_oracle")

@pytest.mark.oracle
def test_against_missing_torch():
    pytest.importorskip("torch_no_such_build", reason="could not import 'torch'")

def test_plain_skip():
    pytest.skip("not an oracle: may skip anywhere")
"""

MODULE_SKIP = """
import pytest

pytest.importorskip("fasttape_no_such_module")

def test_never_collected():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makeini("[pytest]\nmarkers =\n    oracle: needs an optional package\n")
    pytester.makepyfile(test_oracle=ORACLE)
    return pytester


def test_outside_ci_oracles_skip(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CI", raising=False)
    suite.makepyfile(test_module_skip=MODULE_SKIP)
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(skipped=4)
    assert result.ret == 0


@pytest.mark.parametrize("value", ["true", "1"])
def test_under_ci_a_skipped_oracle_fails_and_names_the_fix(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str
):
    monkeypatch.setenv("CI", value)
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2, skipped=1)
    out = result.stdout.str()
    assert "oracle test test_oracle.py::test_against_missing_oracle skipped under CI" in out
    assert 'pip install -e ".[test]"' in out
    assert "pip install torch==2.13.0" in out


def test_under_ci_a_skipped_module_fails(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "true")
    suite.makepyfile(test_module_skip=MODULE_SKIP)
    result = suite.runpytest("-p", "no:cacheprovider")
    assert result.ret != 0
    assert "test module test_module_skip.py skipped under CI" in result.stdout.str()


def test_ci_false_is_not_ci(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "false")
    suite.runpytest("-p", "no:cacheprovider").assert_outcomes(skipped=3)
