"""The run report: one self-contained HTML page (and a Markdown twin) built from pipeline outputs,
with the provenance of every number (DVC lock hash of its artifact, producing stage's params, code
revision). ``inputs`` loads, ``render`` is a pure function of what was loaded, ``figures`` draws."""
