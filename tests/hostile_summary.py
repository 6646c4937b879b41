"""One line at the end of a test run: how many bad inputs ``test_hostile_inputs.py`` tried.

That module registers this plugin (``pytest_plugins = ["hostile_summary"]``) and counts into
:data:`COUNTS`; the line is printed only when it ran, and says so when one of its tests failed.
"""

from __future__ import annotations

MODULE = "test_hostile_inputs.py"
COUNTS = {"files": 0, "generated": 0}  # table cases run; hypothesis examples run


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not any(COUNTS.values()):
        return
    reports = terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
    failed = [report for report in reports if MODULE in getattr(report, "nodeid", "")]
    verdict = (
        "every one refused cleanly or skipped as documented"
        if not failed
        else f"{len(failed)} of its tests failed (see above)"
    )
    terminalreporter.write_line(
        f"hostile inputs: {COUNTS['files']} files tried, {COUNTS['generated']} generated; "
        + verdict
    )
