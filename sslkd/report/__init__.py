"""Result records (summary.json) and the papers' numbers -> side-by-side tables for ``sslkd compare``.

Importing the package registers every layout: each paper's module (mokd, dogo, mcl, sdssl), ``runs`` for any runs and
``eval_tables`` for the recorded evaluations, all over the shared ``core``.
"""

from sslkd.report.records import find_summaries, load_paper_numbers, load_runs, paper_tables
from sslkd.report.core import FORMATS, TABLES, register_table, render, rich_table
from sslkd.report.comparison import compare, compare_table
from sslkd.report.mokd import mokd_table1, mokd_table3
from sslkd.report.runs import runs_table
from sslkd.report import dogo, eval_tables, mcl, sdssl  # noqa: F401  register their layouts

__all__ = [
    "FORMATS", "TABLES", "compare", "compare_table", "find_summaries", "load_paper_numbers", "load_runs",
    "mokd_table1", "mokd_table3", "paper_tables", "register_table", "render", "rich_table", "runs_table",
]
