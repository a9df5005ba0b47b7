"""The HTML report fits a 1400 px window: the columns after the verdict fold into <details>,
cells wrap, and a table that is still too wide scrolls on its own."""

from __future__ import annotations

import re

from moe_theory.report import HTML_STYLE, _html_table

HEADER = ["setting", "fit", "loss", "slope", "verdict", "certified", "fit time (s)", "device"]
ROWS = [["small-sparse-relu", "sigmoid", "D1", "-0.50 ± 0.02", "consistent", "100%", "1.2", "cpu"],
        ["small-dense-relu", "softmax", "D3", "-0.20 ± 0.30", "inconsistent", "90%", "3.4", "cpu"]]


def headers(table_html: str) -> list[str]:
    return re.findall(r"<th>(.*?)</th>", table_html)


def test_columns_after_the_verdict_fold_into_details():
    page = _html_table(HEADER, ROWS)
    main, details = page.split("<details>")
    assert headers(main) == HEADER[:5]
    assert headers(details) == ["setting", "fit", "loss", "certified", "fit time (s)", "device"]
    # every row is in both tables, keyed by setting, fit and loss
    for row in ROWS:
        assert "".join(f"<td>{c}</td>" for c in row[:3]) in details
    assert '<td class="inconsistent">inconsistent</td>' in main


def test_a_table_without_verdict_is_whole():
    page = _html_table(HEADER[:3], [r[:3] for r in ROWS])
    assert "<details>" not in page and headers(page) == HEADER[:3]


def test_style_wraps_cells_and_scrolls_wide_tables():
    css = re.sub(r"/\*.*?\*/", "", HTML_STYLE, flags=re.S)
    rules = {selector.strip(): body for selector, body in re.findall(r"([^{}]+)\{([^}]*)\}", css)}
    assert "nowrap" not in css
    assert "min-width" in rules["td:last-child"]
    assert "overflow-x: auto" in rules[".table"] and "max-width: 100%" in rules[".table"]
