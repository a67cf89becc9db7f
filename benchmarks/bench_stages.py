"""Wall time, CPU time and peak memory of every DVC stage, end to end, in a throwaway copy of the repository.

    python benchmarks/bench_stages.py --tiny          # configs/params-tiny.yaml overlay (minutes)
    python benchmarks/bench_stages.py                 # shipped params.yaml (tens of minutes on 2 cores)
    python benchmarks/bench_stages.py --tiny --source worktree   # uncommitted edits included

The copy is the committed tree (`git archive HEAD`; `--source worktree` copies tracked and untracked, non-ignored
files as they are on disk) without data/, metrics/, models/ and dvc.lock, turned into a fresh git repo, so every stage
really runs (nothing is restored from a DVC cache). Stages run one at a time in dvc.yaml's DAG order
(`skinflow.orchestration.dvc_stages.stage_order`) with `dvc repro --single-item <stage>`, exactly as the Prefect
flow runs them. The same loop is then repeated with every stage up to date: that pass is DVC's own overhead (start-up,
hashing dependencies and outputs against dvc.lock) and is the baseline each stage's time is divided by.

Peak memory. ru_maxrss is a high-water mark, not a sum, so deltas of getrusage(RUSAGE_CHILDREN) taken in one
long-lived parent cannot isolate a stage (after a 2 GB stage, a 500 MB one changes nothing). Each command therefore
runs under a fresh one-shot wrapper process whose RUSAGE_CHILDREN covers only that command: peak RSS is the largest
single process of the tree (the dvc process or the stage's python, whichever is larger; worker processes that their
parent waited for count too), the same figure `/usr/bin/time -v` reports as "Maximum resident set size". It is not
the sum of processes alive at the same time (the ingest pool's workers are not added up). CPU time is user + system
of the whole tree, so CPU time / wall > 1 means the stage used both cores, < 1 that it waited (I/O, or other jobs
on a shared machine).
Writes benchmarks/results/stages[_tiny].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skinflow.config import read_params  # noqa: E402
from skinflow.orchestration.checkout import clean_copy  # noqa: E402

# Run one command, then print the rusage of everything it spawned (this process exists only for that command).
WRAPPER = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.run(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
wall = time.perf_counter() - t0
r = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"returncode": proc.returncode, "wall_s": wall, "cpu_s": r.ru_utime + r.ru_stime,
           "max_rss_mib": r.ru_maxrss / 1024, "ran": "Running stage" in proc.stdout,
           "output_tail": proc.stdout[-3000:]}, open(sys.argv[1], "w"))
"""


def tiny_overrides() -> dict:
    """The tiny overlay the end-to-end test uses too (configs/params-tiny.yaml)."""
    return read_params(REPO / "configs/params-tiny.yaml")


def _env() -> dict[str, str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "GX_ANALYTICS_ENABLED": "false"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)  # the copy's own skinflow/ must be the one imported (`python -m` puts cwd first)
    return env


def measure(cmd: list[str], cwd: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        report = Path(f.name)
    try:
        subprocess.run([sys.executable, "-c", WRAPPER, str(report), *cmd], cwd=cwd, env=_env(), check=True)
        return json.loads(report.read_text())
    finally:
        report.unlink(missing_ok=True)


def run_stages(stages: list[str], cwd: Path, label: str) -> list[dict]:
    rows = []
    for stage in stages:
        r = measure([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd)
        ran = r["ran"]
        print(f"  [{label}] {stage:<24} {r['wall_s']:8.1f} s  cpu {r['cpu_s']:8.1f} s  peak RSS "
              f"{r['max_rss_mib']:7.0f} MiB  {'ran' if ran else 'up to date'}", flush=True)
        if r["returncode"] != 0:
            raise SystemExit(f"stage {stage} failed ({label}):\n{r['output_tail']}")
        rows.append({"stage": stage, "ran": ran, **{k: r[k] for k in ("wall_s", "cpu_s", "max_rss_mib")}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the configs/params-tiny.yaml overlay instead of params.yaml alone")
    ap.add_argument("--source", choices=["head", "worktree"], default="head")
    ap.add_argument("--keep", type=Path, help="make the copy here and keep it (default: a temp dir, removed)")
    args = ap.parse_args()

    from skinflow.orchestration.dvc_stages import stage_order

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_stages_"))
    root.mkdir(parents=True, exist_ok=True)
    overrides = tiny_overrides() if args.tiny else None
    clean_copy(REPO, root, overrides, files=args.source)
    stages = stage_order(root)
    print(f"{len(stages)} stages in DAG order ({'tiny' if args.tiny else 'shipped'} params, source {args.source}): "
          f"{', '.join(stages)}", flush=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    cold = run_stages(stages, root, "run")
    total_run = time.perf_counter() - t0
    if not all(r["ran"] for r in cold):
        print("warning: some stages did not run in the first pass: " + ", ".join(r["stage"] for r in cold
                                                                             if not r["ran"]))
    t0 = time.perf_counter()
    noop = run_stages(stages, root, "up to date")
    total_noop = time.perf_counter() - t0
    if any(r["ran"] for r in noop):
        raise SystemExit("a stage ran again in the up-to-date pass: the pipeline is not reproducible as declared")

    rows = []
    print(f"\n| stage | wall s | CPU s | peak RSS MiB | up-to-date wall s | ratio |\n|---|---|---|---|---|---|")
    for c, n in zip(cold, noop):
        row = {"stage": c["stage"], "wall_s": round(c["wall_s"], 2), "cpu_s": round(c["cpu_s"], 2),
               "max_rss_mib": round(c["max_rss_mib"]), "noop_wall_s": round(n["wall_s"], 2),
               "noop_max_rss_mib": round(n["max_rss_mib"]), "ratio": round(c["wall_s"] / n["wall_s"], 2)}
        rows.append(row)
        print(f"| {row['stage']} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['max_rss_mib']} | "
              f"{row['noop_wall_s']:.1f} | {row['ratio']:.1f}x |")
    print(f"| **total** | {total_run:.1f} | {sum(r['cpu_s'] for r in rows):.1f} | "
          f"{max(r['max_rss_mib'] for r in rows)} | {total_noop:.1f} | {total_run / total_noop:.1f}x |")

    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    out = REPO / f"benchmarks/results/stages{'_tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"params": "tiny" if args.tiny else "shipped", "overrides": overrides, "source": args.source,
            "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                     text=True).stdout.strip(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "total_wall_s": round(total_run, 2), "total_noop_wall_s": round(total_noop, 2),
            # 1/5/15-minute load averages: on a shared machine, CPU s / wall s well below 1 means other jobs ran
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    out.write_text(json.dumps({"meta": meta, "stages": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
