"""Orchestration overhead: DVC's no-op check on the real DAG, and the Prefect flow vs `dvc repro`.

    nice python benchmarks/bench_orchestration.py [--repeats 3] [--noop-repeats 7]

Everything runs in throwaway copies of the repository (tracked files, no data/metrics/models, no
dvc.lock) with the tiny overlay configs/params-tiny.yaml, as the end-to-end test; the checkout itself
is untouched.

(b) From clean, each side in its own fresh copy: plain `dvc repro` vs the Prefect flow
    (`python -m flows.pipeline`, one task per stage) reporting to a local Prefect server started
    once beforehand (a long-running server is how deployments run; its start-up is not counted).
    The two alternate in order, `--repeats` times; medians. Target: flow / dvc <= 1.05.
    The same pair on the dummy DAG below (trivial commands) isolates the flow's fixed overhead in
    seconds (process and API round trips per stage), which does not grow with the work done.
(a) A no-op `dvc repro` on the built copy (the real stages, deps and outputs) vs the same on a
    dummy DAG generated from dvc.yaml: same stage names, edges, params and output paths, but each
    command only writes a few bytes per output and each source dependency is a one-line stand-in.
    Alternating, `--noop-repeats` times; medians. Target: real / dummy <= 1.3.
Prints both ratios and writes benchmarks/results/orchestration.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skinflow.io import write_json  # noqa: E402
from skinflow.orchestration.checkout import clean_copy, commit_all  # noqa: E402
from skinflow.orchestration.local_server import local_prefect_server, server_env  # noqa: E402


DUMMY_SCRIPT = '''"""Write a few bytes to each output of one stage (paths from dummy_outs.json)."""
import json, pathlib, sys
for path, kind in json.loads(pathlib.Path("dummy_outs.json").read_text())[sys.argv[1]]:
    target = pathlib.Path(path)
    if kind == "dir":
        target.mkdir(parents=True, exist_ok=True)
        (target / "part.txt").write_text(sys.argv[1])
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("{}" if target.suffix == ".json" else "step,x\\n0,0\\n" if target.suffix == ".csv" else "x")
'''


def env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "GX_ANALYTICS_ENABLED": "false",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run to completion; return (wall seconds, output). Any failure aborts the benchmark."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed, result.stdout + result.stderr


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of (every finished child, i.e. the timed commands; the processes
    still running, i.e. the Prefect server). Between timed commands only the server is running."""
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            live += sum(process.cpu_times()[:2])
    return done.ru_utime + done.ru_stime, live


def resolved_stages(repo: Path) -> dict[str, dict]:
    """Stage name -> repo-relative file deps and outs, as DVC resolves them (foreach expanded)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return {stage.name: {"deps": [os.path.relpath(d.fs_path, repo) for d in stage.deps
                                      if not isinstance(d, ParamsDependency)],
                             "outs": [os.path.relpath(o.fs_path, repo) for o in stage.outs]}
                for stage in dvc_repo.index.stages}


def dummy_dag(built: Path, dest: Path) -> Path:
    """dvc.yaml of ``built`` with trivial commands; tiny stand-ins for every source dependency.

    Output kinds (file or directory) come from the built copy; a directory output also gets any
    path below it that another stage depends on (ingest reads files inside synth's output)."""
    stages = resolved_stages(built)
    produced = [out for stage in stages.values() for out in stage["outs"]]
    wanted = {dep for stage in stages.values() for dep in stage["deps"]}
    outs_of: dict[str, list[tuple[str, str]]] = {}
    for name, stage in stages.items():
        entries = []
        for out in stage["outs"]:
            entries.append((out, "dir" if (built / out).is_dir() else "file"))
            entries += [(dep, "dir" if (built / dep).is_dir() else "file")
                        for dep in sorted(wanted) if dep.startswith(out + "/")]
        outs_of[name] = entries
    for dep in sorted(wanted):
        if any(dep == out or dep.startswith(out + "/") for out in produced):
            continue  # made by a stage
        target = dest / dep
        if (built / dep).is_dir():
            target.mkdir(parents=True, exist_ok=True)
            (target / "stand_in.txt").write_text(dep)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"# stand-in for {dep}\n")

    spec = yaml.safe_load((built / "dvc.yaml").read_text())
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)   # foreach / matrix stages keep their command under `do` or in place
        # The stage's own resolved name, as its lineage wrapper spells it (``${item}``, ``${key}``, matrix items).
        found = re.search(r"skinflow\.lineage run (\S+) --", body["cmd"])
        body["cmd"] = f"python dummy_stage.py {found.group(1) if found else name}"
    (dest / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy2(built / "params.yaml", dest / "params.yaml")
    (dest / ".dvc").mkdir(exist_ok=True)
    for name in ("config", ".gitignore"):
        shutil.copy2(built / ".dvc" / name, dest / ".dvc" / name)
    (dest / "dummy_stage.py").write_text(DUMMY_SCRIPT)
    (dest / "dummy_outs.json").write_text(json.dumps(outs_of, indent=1))
    commit_all(dest)
    return dest


def same_dag(a: Path, b: Path) -> bool:
    """Same stage names and the same edges (stage -> stages it depends on)."""
    from dvc.repo import Repo

    def edges(path: Path) -> set[tuple[str, str]]:
        with Repo(str(path)) as repo:
            return {(u.name, v.name) for u, v in repo.index.graph.edges} | {(s.name, "") for s in repo.index.stages}
    return edges(a) == edges(b)


def dvc_lock_stages(repo: Path) -> list[str]:
    return sorted(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])


def from_clean(template: Path, work: Path, flow_env: dict[str, str], repeats: int,
               keep_first: bool = False) -> tuple[dict[str, list[float]], dict[str, list[float]], Path | None]:
    """Time `dvc repro` and the Prefect flow, each in a fresh copy of ``template``, alternating.

    Also returns the CPU seconds of each run and of the Prefect server meanwhile (where the
    overhead goes on a machine whose cores the stages already keep busy).
    Both must record the same stages in dvc.lock. With ``keep_first`` the first built dvc copy is
    kept (and returned) for the no-op comparison."""
    times: dict[str, list[float]] = {"dvc_repro": [], "prefect_flow": []}
    cpu: dict[str, list[float]] = {f"{side}_{what}": [] for side in times for what in ("cpu", "server_cpu")}
    commands = {"dvc_repro": ([sys.executable, "-m", "dvc", "repro"], None),
                "prefect_flow": ([sys.executable, "-m", "flows.pipeline"], flow_env)}
    kept, expected = None, None
    for r in range(repeats):
        for side in ("dvc_repro", "prefect_flow") if r % 2 == 0 else ("prefect_flow", "dvc_repro"):
            copy = work / f"{side}-{r}"
            shutil.copytree(template, copy, symlinks=True)
            before = cpu_seconds()
            elapsed, _ = run(commands[side][0], copy, commands[side][1])
            used = [after - b for after, b in zip(cpu_seconds(), before)]
            times[side].append(elapsed)
            cpu[f"{side}_cpu"].append(used[0])
            cpu[f"{side}_server_cpu"].append(used[1])
            print(f"{template.name} {r + 1}/{repeats} {side}: {elapsed:.1f} s wall, {used[0]:.1f} s CPU, "
                  f"server {used[1]:.1f} s CPU", flush=True)
            expected = expected or dvc_lock_stages(copy)
            assert dvc_lock_stages(copy) == expected, f"{side} recorded other stages"
            if keep_first and kept is None and side == "dvc_repro":
                kept = copy
            else:
                shutil.rmtree(copy)
    return times, cpu, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="clean runs of each side (b)")
    parser.add_argument("--noop-repeats", type=int, default=7, help="no-op repro timings of each side (a)")
    parser.add_argument("--overhead-repeats", type=int, default=5, help="flow vs dvc runs on the dummy DAG")
    parser.add_argument("--out", default="benchmarks/results/orchestration.json")
    parser.add_argument("--default-params", action="store_true",
                        help="the embedded default's params (full-size run) instead of the tiny overlay")
    args = parser.parse_args()
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        tmp = Path(tmp)
        # What a fresh clone runs from; the tiny overlay unless the embedded default's own params.
        template = clean_copy(REPO, tmp / "template", None if args.default_params else "configs/params-tiny.yaml")
        with local_prefect_server(tmp / "prefect-home") as url:
            flow_env = {**server_env(tmp / "prefect-home"), "PREFECT_API_URL": url, "PYTHONPATH": str(template)}
            times, cpu, built = from_clean(template, tmp / "real", flow_env, args.repeats, keep_first=True)
            dummy = dummy_dag(built, tmp / "dummy")
            assert same_dag(built, dummy), "the dummy DAG does not have the real DAG's shape"
            fixed, _, _ = from_clean(dummy, tmp / "fixed", flow_env, args.overhead_repeats)
        run([sys.executable, "-m", "dvc", "repro"], dummy)  # build once; the timings below are no-ops
        noop: dict[str, list[float]] = {"noop_real": [], "noop_dummy": []}
        for r in range(args.noop_repeats):
            for side, repo in ((("noop_real", built), ("noop_dummy", dummy)) if r % 2 == 0
                               else (("noop_dummy", dummy), ("noop_real", built))):
                elapsed, out = run([sys.executable, "-m", "dvc", "repro"], repo)
                assert "Running stage" not in out, f"{side}: not a no-op:\n{out[-2000:]}"
                noop[side].append(elapsed)
        n_stages = len(dvc_lock_stages(built))

    seconds = {**times, **{f"dummy_{k}": v for k, v in fixed.items()}, **noop}
    median = {k: statistics.median(v) for k, v in seconds.items()}
    result = {
        "benchmark": "orchestration overhead: Prefect flow vs dvc repro; no-op dvc repro real vs dummy DAG",
        "stages": n_stages, "params": "embedded default" if args.default_params else "tiny overlay",
        "repeats": args.repeats, "noop_repeats": args.noop_repeats, "overhead_repeats": args.overhead_repeats,
        "statistic": "median",
        "seconds": {k: [round(t, 3) for t in v] for k, v in seconds.items()},
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "cpu_s": {k: [round(t, 1) for t in v] for k, v in cpu.items()},
        "ratio_flow_vs_dvc": round(median["prefect_flow"] / median["dvc_repro"], 3), "target_flow_vs_dvc": 1.05,
        "flow_overhead_on_dummy_dag_s": round(median["dummy_prefect_flow"] - median["dummy_dvc_repro"], 2),
        "ratio_noop_real_vs_dummy": round(median["noop_real"] / median["noop_dummy"], 3),
        "target_noop_real_vs_dummy": 1.3,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": f"nice python benchmarks/bench_orchestration.py --repeats {args.repeats} "
                   f"--noop-repeats {args.noop_repeats} --overhead-repeats {args.overhead_repeats}"
                   + (" --default-params" if args.default_params else ""),
    }
    write_json(args.out, result)
    print(f"(b) from clean, {n_stages} stages: dvc repro {median['dvc_repro']:.1f} s | Prefect flow "
          f"{median['prefect_flow']:.1f} s | ratio {result['ratio_flow_vs_dvc']:.3f} (target <= 1.05)")
    print(f"    fixed overhead of the flow on the dummy DAG: {result['flow_overhead_on_dummy_dag_s']:.1f} s "
          f"(dvc repro {median['dummy_dvc_repro']:.1f} s, flow {median['dummy_prefect_flow']:.1f} s)")
    print(f"(a) no-op dvc repro: real DAG {median['noop_real']:.2f} s | dummy DAG {median['noop_dummy']:.2f} s "
          f"| ratio {result['ratio_noop_real_vs_dummy']:.3f} (target <= 1.3)")
    print(f"medians of {args.repeats} / {args.noop_repeats} runs; load average {result['load_average_before_after']}")


if __name__ == "__main__":
    main()
