"""Collects per-output SQNR rows from test_oracle.py and prints them as a table at the end."""

import pytest

ROWS = pytest.StashKey[list]()
SINGLEOP_ROWS = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[ROWS] = []
    config.stash[SINGLEOP_ROWS] = []


@pytest.fixture
def sqnr_rows(request):
    return request.config.stash[ROWS]


@pytest.fixture
def singleop_rows(request):
    return request.config.stash[SINGLEOP_ROWS]


def pytest_terminal_summary(terminalreporter, config):
    singleop_table(terminalreporter, config.stash.get(SINGLEOP_ROWS, []))
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


def singleop_table(tr, rows):
    """test_singleop.py: one line per op and option set, SQNR with XNNPACK on and off."""
    if not rows:
        return
    tr.section("oracle: single-op models, SQNR of quantized vs float outputs (dB)")
    by = {}
    for op, opts, path, db, bound in rows:
        by.setdefault((op, opts), {})[path] = db
        by[(op, opts)]["bound"] = bound
    head = ("op", "options", "xnnpack", "builtin", "bound")
    table = [head] + [(op, opts, *(f"{v[k]:.1f}" if k in v else "-" for k in ("xnnpack", "builtin")),
                       f"{v['bound']:g}") for (op, opts), v in by.items()]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        tr.write_line("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
