"""DVC stage `report`: the run report, reports/report.html (self-contained) and reports/report.md.

Reads whatever the pipeline produced (every input optional; see ``skinflow.report.inputs.SOURCES``)
plus dvc.lock for provenance; dvc.lock is read, not declared as a dependency, since DVC rewrites it
when this very stage finishes.
"""

from __future__ import annotations

from skinflow.io import write_text
from skinflow.report.inputs import ReportConfig, load_inputs
from skinflow.report.render import render_html, render_markdown
from skinflow.stage import stage_config

OUT_HTML = "reports/report.html"
OUT_MD = "reports/report.md"


def main(argv: list[str] | None = None) -> dict:
    cfg, _ = stage_config("report", ReportConfig, argv)
    inputs = load_inputs(cfg)
    write_text(OUT_HTML, render_html(inputs))
    write_text(OUT_MD, render_markdown(inputs))
    present = sorted(a.path for a in inputs.artifacts.values() if a.present)
    absent = sorted(a.path for a in inputs.artifacts.values() if not a.present)
    print(f"report: {len(present)} inputs used, {len(absent)} not produced ({', '.join(absent) or 'none'})")
    return {"present": present, "absent": absent, "code": inputs.code}


if __name__ == "__main__":
    main()
