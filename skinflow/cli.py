"""`skinflow` command line: stage entry points and environment checks.

Stages run from the repository root (paths in params.yaml and dvc.yaml are relative to it); DVC
calls the same entry points through `python -m pipelines.<stage>`.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="SkinFlow: reproducible dermatology VLM pipeline.", no_args_is_help=True,
                  add_completion=False)

SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="override KEY=VALUE in the stage's params section")]
ParamsOption = Annotated[Path, typer.Option("--params", help="params file")]


def _run_stage(module: str, params: Path, overrides: list[str] | None) -> None:
    argv = ["--params", str(params)]
    for item in overrides or []:
        argv += ["--set", item]
    importlib.import_module(f"pipelines.{module}").main(argv)


@app.command()
def synth(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Generate the SkinSynth dataset into data/skinsynth (Fitzpatrick17k file format)."""
    _run_stage("synth", params, set_)


@app.command()
def ingest(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Ingest the configured source into data/interim (every row kept, problems recorded)."""
    _run_stage("ingest", params, set_)


@app.command()
def validate(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Validate, quarantine failing rows and write the manifest and validation report."""
    _run_stage("validate", params, set_)


@app.command()
def doctor() -> None:
    """Check the environment: versions, offline settings, accelerator, DVC."""
    problems = 0
    typer.echo(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    for package in ("torch", "transformers", "trl", "peft", "datasets", "prefect", "dvc",
                    "great-expectations", "duckdb"):
        try:
            typer.echo(f"  {package:20s} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            typer.echo(f"  {package:20s} MISSING")
            problems += 1
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "DVC_NO_ANALYTICS", "DO_NOT_TRACK"):
        value = os.environ.get(var)
        ok = value not in (None, "", "0", "false")
        typer.echo(f"  {var:20s} {value!s:8s} {'ok' if ok else 'NOT SET (make sets it)'}")
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    typer.echo(f"  accelerator          {gpu}")
    typer.echo(f"  dvc repo             {'yes' if Path('.dvc').is_dir() else 'no (run make repro)'}")
    typer.echo(f"  dvc on PATH          {shutil.which('dvc') or 'no'}")
    raise typer.Exit(code=1 if problems else 0)


if __name__ == "__main__":
    app()
