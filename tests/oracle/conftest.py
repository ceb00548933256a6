"""Collects per-output SQNR rows from test_oracle.py and prints them as a table at the end."""

import pytest

ROWS = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[ROWS] = []


@pytest.fixture
def sqnr_rows(request):
    return request.config.stash[ROWS]


def pytest_terminal_summary(terminalreporter, config):
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("oracle: SQNR of quantized vs float model outputs (over all seeds)")
    head = ("fixture", "signature", "output", "SQNR dB", "max abs err", "bound dB")
    table = [head] + [(f, s, o, f"{db:.1f}", f"{err:.3g}", f"{b:g}") for f, s, o, db, err, b in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        flag = "" if r is head or float(r[3]) >= float(r[5]) else "  FAIL"
        tr.write_line("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + flag)
