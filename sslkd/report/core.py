"""What every table layout shares: the registry of layouts, cells (mean +- std over seeds, changes), labels of runs
and settings, the choice of a baseline's runs, and rendering as Markdown, CSV, LaTeX or a rich table.

A layout is a builder ``(runs DataFrame from load_runs) -> DataFrame of display strings`` registered in ``TABLES``
with a test of whether it fits a set of runs; each paper's layouts live in their own module (mokd, dogo, mcl,
sdssl, eval_tables; runs for any runs), so a new paper's table is one module and one ``register_table`` call.
Builders put a title in ``attrs["title"]`` and footnotes in ``attrs["notes"]``; ``render`` prints both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import pandas as pd
from rich.table import Table

from sslkd.errors import UserError
from sslkd.registry import Registry
from sslkd.report.records import PAPER_NUMBERS_DIR, load_paper_numbers


FORMATS = ("md", "csv", "latex")
PROTOCOLS = (("knn", "k-NN", "knn_top1"), ("linear", "Linear", "linear_top1"))
NA = "n/a"
RANDOM_INIT = "random init"  # how tables and plots name untrained runs (train.epochs=0, a proxy table's floor)


@dataclass(frozen=True)
class TableSpec:
    """How to build one table layout and when ``auto`` may choose it."""

    build: Callable[[pd.DataFrame], pd.DataFrame]
    fits: Callable[[pd.DataFrame], bool]
    about: str


TABLES: Registry = Registry("table")


def register_table(name: str, build: Callable[[pd.DataFrame], pd.DataFrame],
                   fits: Callable[[pd.DataFrame], bool], about: str) -> None:
    """Make ``sslkd compare --table NAME`` build ``build(runs)``; ``fits(runs)`` lets ``auto`` pick it."""
    TABLES.register(name)(TableSpec(build, fits, about))


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (ddof=1) and count of the non-missing values of one cell."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat | None:
        kept = pd.Series([v for v in values if v is not None and not math.isnan(v)], dtype=float)
        if kept.empty:
            return None
        return cls(float(kept.mean()), float(kept.std(ddof=1)) if len(kept) > 1 else math.nan, len(kept))


def format_stat(stat: Stat | None) -> str:
    """'mean +- std (n)' with one decimal as in the papers; a single seed has no std."""
    if stat is None:
        return NA
    if stat.n == 1:
        return f"{stat.mean:.1f} (1)"
    return f"{stat.mean:.1f} +- {stat.std:.1f} ({stat.n})"


def at_or_below_floor(value: float | None, floor: float | None) -> bool:
    """Whether a trained model's k-NN is no better than its random initialisation's (both known)."""
    return None not in (value, floor) and not math.isnan(value) and not math.isnan(floor) and value <= floor


FLOOR_MARK = " [<= floor]"


def format_value(value: float | None) -> str:
    return NA if value is None or math.isnan(value) else f"{value:.1f}"


def format_delta(before: float | None, after: float | None) -> str:
    """Signed change of ``after`` over ``before``, rounded so that -0.0 prints as +0.0."""
    if before is None or after is None or math.isnan(before) or math.isnan(after):
        return NA
    change = round(after - before, 1)
    return f"{change + 0.0:+.1f}"


def mean_of(stat: Stat | None) -> float | None:
    return None if stat is None else stat.mean


def backbone_label(backbone: str, paper_name: str) -> str:
    """Our backbone, with the paper backbone it stands in for (proxy runs)."""
    return f"{backbone} (as {paper_name})" if paper_name else backbone


def blank_missing(values: pd.Series) -> pd.Series:
    """Missing labels (no tag, no paper name) as '', so that grouping by them keeps those runs."""
    return values.astype(object).where(values.notna(), "")


def paper_numbers(name: str, notes: list[str]) -> pd.DataFrame | None:
    """A transcribed paper table; None, with a note, outside a source checkout (no zoo_configs/paper_numbers)."""
    if not (PAPER_NUMBERS_DIR / f"{name}.csv").is_file():
        notes.append(f"paper numbers not shown: {PAPER_NUMBERS_DIR} is missing (run from a source checkout)")
        return None
    return load_paper_numbers(name)


def setting_label(dataset: str, epochs: int, tag: str) -> str:
    return f"ours: {dataset}, {epochs} ep" + (f", {tag}" if tag else "")


def two_member_runs(runs: pd.DataFrame, method: str, notes: list[str]) -> Iterator[tuple[str, pd.DataFrame]]:
    """Each run of two members, in member order, for a pair table; a note names each run of another size."""
    for run_dir, members in runs.groupby("run_dir", sort=False):
        members = members.sort_values("member_index")
        if len(members) != 2:
            notes.append(f"skipped {run_dir}: a {method} run with {len(members)} members does not fit a pair table")
            continue
        yield run_dir, members


def alone_runs(alone: pd.DataFrame, method: str, backbone: str, dataset: str, epochs: int, notes: list[str],
                label: str) -> tuple[pd.DataFrame, str]:
    """``method`` runs of ``backbone`` on ``dataset`` (a net trained alone): same epochs if any, else the nearest
    (ties: longer); and the cell suffix saying so. ``label`` names the column in the notes."""
    same = alone[(alone.method == method) & (alone.backbone == backbone) & (alone.dataset == dataset)]
    if same.empty:
        notes.append(f"no {method} run of {backbone} on {dataset}: {label} {backbone} is n/a "
                     f"(train one with sslkd train --method {method})")
        return same, ""
    if (same.epochs == epochs).any():
        return one_setting(same[same.epochs == epochs], notes, label), ""
    nearest = min(same.epochs.unique(), key=lambda e: (abs(e - epochs), -e))
    notes.append(f"no {epochs}-epoch {method} run of {backbone} on {dataset}: {label} uses its {nearest}-epoch runs")
    return one_setting(same[same.epochs == nearest], notes, label), f" [{nearest} ep]"


def one_setting(found: pd.DataFrame, notes: list[str], label: str) -> pd.DataFrame:
    """The runs of one setting (config file and tag) among ``found``, never a pool of different ones: the untagged
    setting if there is one, else the one with most seeds; a note names what was left out."""
    settings = found.assign(tag=found.tag.fillna("")).groupby(["config", "tag"], sort=False).seed.nunique()
    if len(settings) < 2:
        return found
    chosen = max(settings.index, key=lambda key: (key[1] == "", settings[key]))
    others = [f"{config or 'default config'}{f' [{tag}]' if tag else ''}" for config, tag in settings.index
              if (config, tag) != chosen]
    notes.append(f"{label} uses {chosen[0] or 'default config'}{f' [{chosen[1]}]' if chosen[1] else ''} runs, not "
                 f"{', '.join(others)} (different settings are not pooled)")
    return found[(found.config == chosen[0]) & (found.tag.fillna("") == chosen[1])]


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def _markdown(table: pd.DataFrame) -> str:
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    rows = [line(table.columns), "|" + "|".join("---" for _ in table.columns) + "|"]
    rows += [line(values) for values in table.itertuples(index=False)]
    return "\n".join(rows)


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials, then typeset '+-' and 'Δ' as math."""
    escaped = "".join(LATEX_SPECIAL.get(char, char) for char in str(text))
    return escaped.replace("+-", r"$\pm$").replace("Δ", r"$\Delta$")


def _latex(table: pd.DataFrame) -> str:
    def line(cells: Iterable[str]) -> str:
        return " & ".join(latex_escape(cell) for cell in cells) + r" \\"

    body = [line(values) for values in table.itertuples(index=False)]
    return "\n".join([rf"\begin{{tabular}}{{{'l' * len(table.columns)}}}", r"\toprule", line(table.columns),
                      r"\midrule", *body, r"\bottomrule", r"\end{tabular}"])


def render(table: pd.DataFrame, fmt: str = "md") -> str:
    """The table as Markdown (title and notes around it), CSV (cells only) or a LaTeX booktabs tabular."""
    check_format(fmt)
    title, notes = table.attrs.get("title", ""), table.attrs.get("notes", [])
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "latex":
        comments = [f"% {text}" for text in ([title] if title else []) + notes]
        return "\n".join([*comments, _latex(table)]) + "\n"
    head = [f"**{title}**", ""] if title else []
    tail = ["", *(f"- {note}" for note in notes)] if notes else []
    return "\n".join([*head, _markdown(table), *tail]) + "\n"


def rich_table(table: pd.DataFrame, title: str | None = None) -> Table:
    """The table for terminal display; notes become the caption."""
    notes = table.attrs.get("notes", [])
    shown = Table(title=title if title is not None else table.attrs.get("title"),
                  caption="\n".join(notes) or None, caption_justify="left")
    for column in table.columns:
        shown.add_column(str(column), overflow="fold")
    for values in table.itertuples(index=False):
        shown.add_row(*map(str, values))
    return shown
