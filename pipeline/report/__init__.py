"""A run report: one self-contained HTML page about an output Parquet, readable offline.

    from pipeline.report import write_report
    page = write_report(Path("data/out/questions.parquet"))   # -> data/out/questions.report.html

The page shows requests per minute against the tier's limit, latency, cost over time and per
row, outcomes and errors by code, retries and 429s, and for label jobs the label distribution
and the agreement of votes; then the run summary (``momo_batch.totals``) and the provenance
(the Parquet's ``momo_batch.*`` metadata). It reads only the columns it charts.

Why matplotlib, rendered to inline SVG
--------------------------------------
The page must open offline, so whatever draws the charts travels inside it. Plotly (or Bokeh,
or Vega) would inline its JavaScript runtime into every report: plotly.js alone is 4.8 MB, so a
report of a few hundred kB of data becomes a 5 MB file that needs scripts allowed to show
anything. matplotlib draws the charts when the report is made: each is an ``<svg>`` element of
tens of kB, the page has no script at all (a Content-Security-Policy forbids every fetch), it
opens in any browser, mail client or file preview and prints as vectors. The price is the
install, paid once: matplotlib and its dependencies add about 25 MB of wheels (100 MB on
disk, against 75 MB for plotly), loaded only by this command; and no hover or zoom, which a
report of aggregates (time bins, histograms, counts) needs less than a notebook does. Every
chart is an aggregate, so the page's size does not grow with the number of rows.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ._data import RunData, load_run

__all__ = ["RunData", "default_report_path", "load_run", "render_report", "write_report"]


def default_report_path(output: Path) -> Path:
    """Where a report goes when no path is given: beside the output, ``<name>.report.html``."""
    return output.with_name(output.stem + ".report.html")


def render_report(run: RunData) -> str:
    """The HTML page for a loaded output."""
    from ._charts import charts  # matplotlib: imported only when a report is made
    from ._page import render

    return render(run, charts(run))


def write_report(output: Path, target: Path | None = None) -> Path:
    """Write the report of ``output`` (an output Parquet) to ``target`` (a file or a folder); return its path.

    Raises :class:`~pipeline.errors.ConfigError` for a file that is not a momo-batch output, or
    a page that cannot be written.
    """
    page = render_report(load_run(output))
    target = target or default_report_path(output)
    if target.is_dir():  # -o some/folder: the usual name, in that folder
        target = target / default_report_path(output).name
    tmp = target.with_name(target.name + ".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(target)  # a reader never sees half a page
    except OSError as exc:
        raise ConfigError(f"cannot write the report {target}: {exc.strerror or exc}") from None
    return target
