"""The e2e client load's arithmetic (tests/e2e/clientload.py): which requests belong to an
operation, the longest gap between successes, the failures' window, 405s apart."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import clientload  # tests/e2e is not a package
from clientload import Row

LOG = """100.0 100.5 ok
101.0 101.4 ok
102.0 103.0 failed Error response from daemon: connection refused
103.1 104.0 failed EOF
104.2 105.0 refused unknown: 405 Method Not Allowed
105.1 106.0 ok
end
"""


def test_parse_reads_each_row_and_skips_the_end_marker() -> None:
    rows = clientload.parse("pull", LOG)
    assert [row.result for row in rows] == ["ok", "ok", "failed", "failed", "refused", "ok"]
    assert rows[2] == Row("pull", 102.0, 103.0, "failed",
                          "Error response from daemon: connection refused")
    assert rows[0].error == ""


def test_summarize_counts_the_window_and_measures_gaps() -> None:
    figures = clientload.summarize(clientload.parse("push", LOG), 101.0, 106.0)
    assert figures == {"requests": 5, "failed": 2, "refused_read_only": 1,
                       "longest_gap_seconds": 4.6, "failure_window_seconds": 2.0,
                       "errors": ["Error response from daemon: connection refused", "EOF"]}


def test_a_quiet_window_has_no_failures_and_the_gap_around_it() -> None:
    rows = [Row("probe", t, t + 0.1, "ok", "") for t in (0.0, 1.0, 5.0)]
    figures = clientload.summarize(rows, 2.0, 3.0)
    assert figures["requests"] == 0 and figures["failed"] == 0
    assert figures["longest_gap_seconds"] == 4.0  # the success before and after it
    assert clientload.pulls_failed({"pull": figures, "control_pull": {"failed": 2}}) == 2
