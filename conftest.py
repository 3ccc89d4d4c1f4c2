"""pytest configuration shared by tests/ and benchmarks/: under CI, an oracle test may not skip.

The tests marked ``oracle`` compare fasttape with an independent implementation from an
optional package (JAX, HIPS autograd, SciPy, SymPy, PyTorch).  Locally they skip when the
package is missing; in CI (the ``CI`` environment variable set, as ``CI=true bash .ci/run``
does) such a skip would hide exactly the check CI is for, so it is reported as a failure that
names the package and the extra that installs it.  A test module skipped as a whole (a
module-level ``pytest.importorskip``) is treated the same way.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

#: What installs each optional package the oracle tests import.
INSTALL_HINT = {
    "torch": "pip install torch==2.13.0 (CPU wheel; .ci/run installs it)",
    "cyipopt": "apt-get install coinor-libipopt-dev liblapack-dev libblas-dev pkg-config, "
               "then pip install cyipopt (.ci/run does both)",
}
DEFAULT_HINT = 'pip install -e ".[test]" (the test extra installs it)'


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _hint(reason: str) -> str:
    for module, hint in INSTALL_HINT.items():
        if f"'{module}" in reason:
            return hint
    return DEFAULT_HINT


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, "Skipped: why")
        return str(longrepr[2])
    return str(longrepr)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport, what: str) -> None:
    reason = _skip_reason(report)
    report.outcome = "failed"
    report.longrepr = (f"{what} skipped under CI ({reason}); a skipped oracle hides the check "
                       f"CI runs it for: {_hint(reason)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _in_ci() and item.get_closest_marker("oracle") is not None:
        _fail_skip(report, f"oracle test {item.nodeid}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _in_ci() and isinstance(collector, pytest.Module):
        _fail_skip(report, f"test module {collector.nodeid}")
