"""`skinflow` command line: stage entry points, lineage audit and environment checks.

Stages run from the repository root (paths in params.yaml and dvc.yaml are relative to it); DVC
calls the same entry points through `python -m pipelines.<stage>`. Heavy libraries are imported
only inside the command that needs them, so `skinflow --help` stays instant.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import os
import platform
import shutil
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="SkinFlow: reproducible dermatology VLM pipeline.", no_args_is_help=True,
                  add_completion=False)

SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="override KEY=VALUE in the stage's params section")]
ParamsOption = Annotated[Path, typer.Option("--params", help="params file")]
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=code)


def _call_main(module: str, argv: list[str] | None) -> None:
    """Import ``pipelines.<module>`` and call its ``main``, with ``argv`` when it takes one."""
    from skinflow.config import ConfigError

    main = importlib.import_module(f"pipelines.{module}").main
    takes_argv = bool(inspect.signature(main).parameters)
    if argv and not takes_argv:
        _fail(f"pipelines.{module} takes no arguments (got {' '.join(argv)})")
    try:
        main(argv) if takes_argv else main()
    except ConfigError as exc:
        _fail(str(exc))


def _run_stage(module: str, params: Path, overrides: list[str] | None, extra: tuple[str, ...] | list[str] = ()) -> None:
    argv = [*extra, "--params", str(params)]
    for item in overrides or []:
        argv += ["--set", item]
    _call_main(module, argv)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="directory to write the dataset into (replaced atomically)")] = Path("data/skinsynth"),
    n_images: Annotated[Optional[int], typer.Option("--n-images", help="number of images")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="image side in pixels (64-256)")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="generator seed (same seed, same bytes)")] = None,
    conditions: Annotated[Optional[str], typer.Option("--conditions", help="comma-separated condition labels (default: all)")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="render processes (default: automatic)")] = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Generate a SkinSynth dataset (Fitzpatrick17k file format) into data/skinsynth or any --out.

    Settings come from the params file's `synth` section (defaults if the file does not exist), then
    --set, then the explicit options."""
    from skinflow.config import ConfigError, load_section
    from skinflow.data.skinsynth import SynthConfig, generate
    from skinflow.stage import show_progress

    overrides = list(set_ or [])
    for key, value in (("n_images", n_images), ("image_size", image_size), ("seed", seed)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if conditions is not None:
        overrides.append(f"conditions={json.dumps([c.strip() for c in conditions.split(',') if c.strip()])}")
    try:
        if params.exists():
            cfg = load_section("synth", SynthConfig, params, overrides)
        else:
            from skinflow.config import apply_overrides

            typer.echo(f"{params} not found: using SynthConfig defaults", err=True)
            cfg = SynthConfig.model_validate(apply_overrides({}, overrides))
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
    summary = generate(out, cfg, progress=show_progress(), workers=workers)
    typer.echo(json.dumps({"out": str(out), **{k: v for k, v in summary.items() if not isinstance(v, dict)}},
                          default=str))


@app.command()
def ingest(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Ingest the configured source into data/interim (every row kept, problems recorded)."""
    _run_stage("ingest", params, set_)


@app.command()
def validate(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Validate, quarantine failing rows and write the manifest and validation report."""
    _run_stage("validate", params, set_)


@app.command()
def caption(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Write a schema caption for every validated image (quarantining unparseable ones)."""
    _run_stage("caption", params, set_)


@app.command("base-model")
def base_model(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Build the tiny local Qwen2.5-VL (or copy a local pretrained directory) into models/base."""
    _run_stage("base_model", params, set_)


@app.command()
def warmup(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Supervised warm-up on both output formats into models/warmup, then a format check."""
    _run_stage("warmup", params, set_)


SeedOption = Annotated[int, typer.Option("--seed", help="the run's seed (one of ablation.seeds in the DAG)")]


@app.command("stage1-rl")
def stage1_rl(params: ParamsOption = Path("params.yaml"), set_: SetOption = None, seed: SeedOption = 0) -> None:
    """Stage I GRPO (schema descriptions of visible signs): models/warmup -> models/stage1-s<seed>."""
    _run_stage("stage1_rl", params, set_, ("--seed", str(seed)))


@app.command("stage2-rl")
def stage2_rl(params: ParamsOption = Path("params.yaml"), set_: SetOption = None, seed: SeedOption = 0) -> None:
    """Stage II GRPO (ranked top-6 diagnosis): models/stage1-s<seed> -> models/stage2-s<seed>."""
    _run_stage("stage2_rl", params, set_, ("--seed", str(seed)))


@app.command()
def evaluate(
    variant: Annotated[str, typer.Option("--variant", help="name of the result (data/eval/<variant>, metrics/eval/<variant>.json)")],
    model: Annotated[Path, typer.Option("--model", help="model directory to evaluate, e.g. models/stage2")],
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Clinically grounded metrics with bootstrap CIs for one model variant."""
    if not model.is_dir():
        _fail(f"model directory {model} does not exist")
    _run_stage("evaluate", params, set_, ["--variant", variant, "--model", str(model)])


@app.command()
def ablation() -> None:
    """One table of every evaluated variant (reports/ablation.md, reports/ablation.json)."""
    if not Path("metrics/eval").is_dir():
        _fail("metrics/eval does not exist: run the evaluate stages first (dvc repro evaluate)")
    _call_main("ablation", None)


@app.command()
def report(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Build the run report (reports/report.html and reports/report.md) from what the pipeline produced."""
    if importlib.util.find_spec("pipelines.report") is None:
        _fail("there is no report stage in this checkout (pipelines/report.py does not exist); "
              "`skinflow lineage metrics/<file>.json:<key>` and reports/ablation.md cover the results so far")
    _run_stage("report", params, set_)


@app.command()
def lineage(
    target: Annotated[str, typer.Argument(help="metric file and dotted key, e.g. metrics/eval/stage2.json:overall.top1_exact.value")],
    verify: Annotated[bool, typer.Option("--verify", help="re-hash every artifact on the chain; exit 1 naming each mismatch")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    ledger_file: Annotated[Optional[Path], typer.Option("--ledger", help="ledger file (default: $SKINFLOW_LEDGER or .skinflow/lineage.duckdb)")] = None,
    repo: Annotated[Path, typer.Option("--repo", help="repository root")] = Path("."),
) -> None:
    """Audit a metric: its value and the chain back to the raw inputs.

    The chain (stages, artifacts with hashes, params, code revision and dirty flag) comes from
    dvc.lock and the run ledger."""
    from skinflow.lineage import LineageError
    from skinflow.lineage.audit import build_audit, verify as verify_audit
    from skinflow.lineage.render import render_tree, to_json

    try:
        audit = build_audit(target, repo, ledger_file)
        if verify:
            verify_audit(audit)
    except LineageError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(to_json(audit), indent=2, default=str) if as_json else render_tree(audit), nl=as_json)
    if audit.problems:
        raise typer.Exit(code=1)


@app.command("verify-lock")
def verify_lock(
    against: Annotated[str, typer.Option("--against", help="git revision whose dvc.lock is the reference")] = "HEAD",
    lock: Annotated[Path, typer.Option("--lock", help="the lock a fresh run wrote")] = Path("dvc.lock"),
) -> None:
    """Compare a fresh run's dvc.lock with a committed one, output by output (run facts under metrics/timing/
    excluded); exit 1 naming every output that differs."""
    from skinflow.lineage.lockdiff import committed_lock, lock_differences, output_hashes, read_lock

    reference, fresh = committed_lock(against), read_lock(lock)
    diffs = lock_differences(reference, fresh)
    for line in diffs:
        typer.echo(line)
    n = len(output_hashes(reference))
    if diffs:
        _fail(f"{len(diffs)} of {n} outputs differ from {against}'s dvc.lock", code=1)
    typer.echo(f"all {n} outputs match {against}'s dvc.lock (run facts under metrics/timing/ excluded)")


params_app = typer.Typer(help="Switch params.yaml between shipped configurations.", no_args_is_help=True)
app.add_typer(params_app, name="params")


@params_app.command("use")
def params_use(
    overlay: Annotated[Path, typer.Argument(help="a shipped overlay, e.g. configs/params-fitzpatrick17k.yaml")],
    params: ParamsOption = Path("params.yaml"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the diff, write nothing")] = False,
) -> None:
    """Apply an overlay to params.yaml: each of its keys replaces that key of its section, comments elsewhere are
    kept, and the diff is printed. Undo with `git checkout params.yaml`; `dvc status` shows what will re-run."""
    import difflib
    import tempfile

    from skinflow.config import RUNTIME, ConfigError, load_section, overlay_params_text, read_params, section_model
    from skinflow.io import write_text

    for path in (params, overlay):
        if not path.exists():
            _fail(f"not found: {path}")
    before = params.read_text(encoding="utf-8")
    try:
        after = overlay_params_text(before, overlay)
        with tempfile.TemporaryDirectory() as tmp:  # every section must load before the file is replaced
            candidate = Path(tmp) / "params.yaml"
            candidate.write_text(after, encoding="utf-8")
            for section in set(read_params(candidate)) - {RUNTIME}:
                load_section(section, section_model(section), candidate)
    except ConfigError as exc:
        _fail(str(exc))
    diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), str(params), f"{params} + {overlay}",
                                     lineterm="", n=0))
    typer.echo("\n".join(diff) if diff else f"{params} already holds every value of {overlay}")
    if diff and not dry_run:
        write_text(params, after)
        typer.echo(f"wrote {params}; `dvc status` lists the stages this changes")


@app.command()
def deps(
    stages: Annotated[Optional[list[str]], typer.Argument(help="stages (e.g. synth, stage1_rl@0, stage1_rl); default all")] = None,
    check: Annotated[bool, typer.Option("--check", help="exit 1 naming each code file a stage's dvc.yaml deps miss")] = False,
) -> None:
    """The in-repo code each dvc.yaml stage runs (its imports, transitively), marked where its deps miss it."""
    from skinflow.lineage.code_deps import main

    code = main([*(stages or []), *(["--check"] if check else [])])
    if code:
        raise typer.Exit(code=code)


@app.command()
def runs(
    stage: Annotated[Optional[str], typer.Option("--stage", help="only this stage (e.g. evaluate@stage2)")] = None,
    limit: Annotated[int, typer.Option("--limit", help="newest N runs")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    ledger_file: Annotated[Optional[Path], typer.Option("--ledger", help="ledger file")] = None,
) -> None:
    """List the newest runs in the lineage ledger, failed ones included."""
    from skinflow.lineage import ledger
    from skinflow.lineage.recorder import repo_root

    path = ledger_file or ledger.ledger_path(repo_root(Path.cwd()))
    records = ledger.runs(path, stage, limit)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in records], indent=2, default=str))
        return
    if not records:
        typer.echo(f"no runs recorded in {path}")
        return
    for r in records:
        dirty = " DIRTY" if r.git_dirty else ""
        typer.echo(f"{r.ended_at.isoformat(timespec='seconds')}  {r.stage:20s} {r.status:9s} exit {r.exit_code:<3d} "
                   f"{r.seconds:8.1f} s  rev {(r.git_commit or '-')[:10]}{dirty}  {r.run_id[:8]}")


@app.command("export-records")
def export_records(
    repo: Annotated[Path, typer.Option("--repo", help="repository root")] = Path("."),
    ledger_file: Annotated[Optional[Path], typer.Option("--ledger", help="ledger file")] = None,
) -> None:
    """Write each stage's lineage record file (metrics/timing/lineage/<stage>.json) from the ledger's run that
    dvc.lock describes; then `dvc commit` those stages. For runs made before stages declared the file."""
    from skinflow.lineage.audit import export_records as export

    written = export(repo, ledger_file)
    missing = sorted(name for name, path in written.items() if path is None)
    typer.echo(f"wrote {len(written) - len(missing)} record files" + (f"; no matching run for {missing}" if missing else ""))
    if missing:
        raise typer.Exit(1)


@app.command()
def doctor() -> None:
    """Check the environment: versions, offline settings, accelerator, DVC remote, Prefect API."""
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
    for line in _gpu_lines():
        typer.echo(f"  {line}")
    typer.echo(f"  dvc repo             {'yes' if Path('.dvc').is_dir() else 'no (run make repro)'}")
    typer.echo(f"  dvc on PATH          {shutil.which('dvc') or 'no'}")
    typer.echo(f"  dvc remote           {_dvc_remote()}")
    prefect_line, prefect_ok = _prefect_api()
    typer.echo(f"  prefect api          {prefect_line}")
    problems += not prefect_ok
    typer.echo(f"  lineage ledger       {_ledger_line()}")
    raise typer.Exit(code=1 if problems else 0)


def _gpu_lines() -> list[str]:
    import torch

    from skinflow.lineage.context import accelerator

    lines = [f"accelerator          {accelerator()} (NVIDIA driver view)",
             f"CUDA_VISIBLE_DEVICES {os.environ.get('CUDA_VISIBLE_DEVICES', '(not set)')}"]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"torch sees           {len(names)} CUDA device(s): {', '.join(names)} (CUDA {torch.version.cuda})")
    else:
        why = "CPU-only torch build" if torch.version.cuda is None else "no usable CUDA device"
        lines.append(f"torch sees           none ({why}; stages run on CPU)")
    return lines


def _dvc_remote() -> str:
    if not Path(".dvc").is_dir():
        return "n/a (not a DVC repository)"
    try:
        from dvc.repo import Repo

        with Repo(".") as repo:
            remotes = dict(repo.config.get("remote", {}))
            default = repo.config.get("core", {}).get("remote")
    except Exception as exc:  # unreadable config
        return f"unknown ({exc})"
    if not remotes:
        return "none configured (dvc push/pull unavailable; outputs live only in this checkout's cache)"
    names = ", ".join(f"{name} -> {conf.get('url', '?')}" for name, conf in remotes.items())
    return f"{names}; default: {default or 'NONE (set one with dvc remote default <name>)'}"


def _prefect_api() -> tuple[str, bool]:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return "PREFECT_API_URL not set: flows start a temporary local server (make flow)", True
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=3) as response:
            return f"{url} reachable (health {response.status})", True
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{url} NOT reachable ({reason}); start it with make prefect-server", False


def _ledger_line() -> str:
    from skinflow.lineage import ledger
    from skinflow.lineage.recorder import repo_root

    path = ledger.ledger_path(repo_root(Path.cwd()))
    if not path.exists():
        return f"{path} (no runs recorded yet)"
    try:
        return f"{path} ({len(ledger.runs(path))} runs)"
    except Exception as exc:  # locked for too long or corrupt
        return f"{path} unreadable ({exc})"


def _discover_stage_modules() -> dict[str, str]:
    """Modules ``pipelines/<name>.py`` with a top-level ``main`` and their docstring's first line,
    read without importing them (importing a stage pulls in torch)."""
    spec = importlib.util.find_spec("pipelines")
    found = {}
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(Path(folder).glob("*.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, SyntaxError):
                continue
            if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
                doc = (ast.get_docstring(tree) or f"pipelines/{path.name}").split("\n\n")[0]
                found[path.stem] = " ".join(doc.split())
    return found


def _passthrough_command(module: str, doc: str):
    def command(ctx: typer.Context) -> None:
        _call_main(module, list(ctx.args))

    command.__doc__ = f"{doc}\n\nArguments are passed to pipelines.{module}'s main."
    return command


def _register_discovered() -> None:
    """A passthrough command for every stage module added after this file was written."""
    known = {(c.name or c.callback.__name__).replace("-", "_") for c in app.registered_commands}
    for module, doc in _discover_stage_modules().items():
        if module not in known:
            app.command(module.replace("_", "-"), context_settings=PASSTHROUGH)(_passthrough_command(module, doc))


_register_discovered()

if __name__ == "__main__":
    app()
