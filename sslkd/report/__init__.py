"""Result records (summary.json) and the papers' numbers -> side-by-side tables for ``sslkd compare``."""

from sslkd.report.records import find_summaries, load_paper_numbers, load_runs, paper_tables
from sslkd.report.tables import (
    FORMATS,
    TABLES,
    compare,
    compare_table,
    mokd_table1,
    mokd_table3,
    register_table,
    render,
    rich_table,
    runs_table,
)
from sslkd.report import eval_tables  # noqa: E402,F401  registers the recorded-evaluation tables (MOKD 4/5/7/9...)

__all__ = [
    "FORMATS", "TABLES", "compare", "compare_table", "find_summaries", "load_paper_numbers", "load_runs",
    "mokd_table1", "mokd_table3", "paper_tables", "register_table", "render", "rich_table", "runs_table",
]
