"""Throughput of the Stage I / Stage II reward totals against plain ``json.loads`` on the same strings.

    python benchmarks/bench_rewards.py            # 3000 completions per stage
    python benchmarks/bench_rewards.py --n 500    # quick check

Completions are a realistic mix: valid outputs (compact, indented, fenced, with prose), near misses
(one wrong field, a diagnosis in the summary, duplicate or 7-item lists), truncated JSON and junk.
Caches are cleared before every timed pass (fresh LabelSpace too), so numbers are cold-cache: each
distinct string is parsed once, as in a GRPO step. "adapters" runs all TRL component functions in
batches of 64. Writes benchmarks/results/rewards.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import pandas as pd

from skinflow.captions.parser import render_caption
from skinflow.captions.schema import Caption
from skinflow.vocab import SCALAR_FIELDS, SET_FIELDS
from skinflow.eval.equivalence import LabelSpace
from skinflow.rl import rewards as R

REPO = Path(__file__).resolve().parents[1]
TAXONOMIES = [REPO.parent / "shared/data/fitzpatrick17k/taxonomy.csv", REPO / "data/interim/taxonomy.csv"]
WORDS = "the lesion is red and scaly with a well defined border likely benign maybe psoriasis I cannot tell".split()


def random_caption(rng: random.Random) -> Caption:
    row = {f: rng.choice(v) for f, v in SCALAR_FIELDS.items()}
    for f, v in SET_FIELDS.items():
        row[f] = rng.sample([t for t in v if t != "none"], rng.randint(1, 3))
    return Caption.from_attributes(row)


def junk(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))


def stage1_data(n: int, rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        ref = random_caption(rng)
        obj = json.loads(render_caption(ref))
        r = rng.random()
        if r < 0.15:
            obj["body_site"] = rng.choice(SCALAR_FIELDS["body_site"])
        elif r < 0.25:
            obj["summary"] = "Scaly plaques typical of psoriasis."
        text = json.dumps(obj, indent=2 if rng.random() < 0.3 else None)
        r = rng.random()
        if r < 0.10:
            text = f"```json\n{text}\n```"
        elif r < 0.20:
            text = text[: rng.randint(1, len(text) - 1)]  # truncated
        elif r < 0.35:
            text = junk(rng)
        elif r < 0.40:
            text = "Description: " + text + " " + junk(rng)
        out.append((text, render_caption(ref)))
    return out


def stage2_data(n: int, labels: list[str], rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        truth = rng.choice(labels)
        items = rng.sample(labels, rng.randint(1, 6))
        if rng.random() < 0.4:
            items[rng.randrange(len(items))] = truth
        r = rng.random()
        if r < 0.05:
            items = items + [items[0]]  # duplicate
        elif r < 0.10:
            items = rng.sample(labels, 7)
        elif r < 0.15:
            items[0] = junk(rng)[:30] or "x"  # out of vocabulary
        text = json.dumps({"diagnoses": items})
        r = rng.random()
        if r < 0.2:
            text = "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1))
        elif r < 0.3:
            text = text[: rng.randint(1, len(text) - 1)]
        elif r < 0.4:
            text = junk(rng)
        out.append((text, truth))
    return out


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        R.clear_caches()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)  # min: the least disturbed pass on a shared machine


def json_baseline(texts: list[str]) -> None:
    for t in texts:
        try:
            json.loads(t)
        except ValueError:
            pass


def adapters(funcs_factory, pairs, column) -> None:
    funcs = funcs_factory()
    for start in range(0, len(pairs), 64):
        batch = pairs[start : start + 64]
        kwargs = {column: [b for _, b in batch]}
        for f in funcs:
            f(prompts=[""] * len(batch), completions=[a for a, _ in batch], completion_ids=None, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(0)
    tax_path = next(p for p in TAXONOMIES if p.exists())
    taxonomy = pd.read_csv(tax_path)
    labels = sorted(taxonomy["label"])
    s1, s2 = stage1_data(args.n, rng), stage2_data(args.n, labels, rng)
    c1, c2 = R.Stage1RewardConfig(), R.Stage2RewardConfig()

    def stage2_totals():
        space = LabelSpace(taxonomy)  # fresh mapping cache: cold
        for text, truth in s2:
            R.stage2_components(text, truth, space, c2)

    cases = {
        "stage1": {
            "json_loads": lambda: json_baseline([t for t, _ in s1]),
            "total": lambda: [R.stage1_components(t, ref, labels, c1) for t, ref in s1],
            "adapters": lambda: adapters(lambda: R.make_stage1_reward_funcs(c1, labels), s1, "reference_caption"),
        },
        "stage2": {
            "json_loads": lambda: json_baseline([t for t, _ in s2]),
            "total": stage2_totals,
            "adapters": lambda: adapters(lambda: R.make_stage2_reward_funcs(c2, LabelSpace(taxonomy)), s2, "label"),
        },
    }
    results: dict = {"n": args.n, "repeats": args.repeats, "taxonomy": str(tax_path.relative_to(REPO.parent)),
                     "labels": len(labels), "python": platform.python_version(), "machine": platform.machine()}
    for stage, fns in cases.items():
        secs = {name: timed(fn, args.repeats) for name, fn in fns.items()}
        row = {f"{name}_per_s": round(args.n / s, 1) for name, s in secs.items()}
        row["total_vs_json_loads_time_ratio"] = round(secs["total"] / secs["json_loads"], 2)
        row["adapters_vs_json_loads_time_ratio"] = round(secs["adapters"] / secs["json_loads"], 2)
        results[stage] = row
        print(f"{stage}: json.loads {row['json_loads_per_s']:,.0f}/s | reward total {row['total_per_s']:,.0f}/s "
              f"({row['total_vs_json_loads_time_ratio']}x json.loads time) | all TRL component funcs "
              f"{row['adapters_per_s']:,.0f}/s ({row['adapters_vs_json_loads_time_ratio']}x)")
    out = REPO / "benchmarks/results/rewards.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
