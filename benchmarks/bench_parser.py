"""Throughput of the caption and diagnosis parsers against plain ``json.loads`` on the same strings.

    python benchmarks/bench_parser.py             # 5000 strings per parser
    python benchmarks/bench_parser.py --n 500     # quick check

The strings are a deterministic (seeded) mix shaped like model output: valid compact and indented JSON, fenced,
wrapped in prose, with free-text synonyms or off-vocabulary terms, truncated, non-JSON junk and empty output; the
diagnosis mix adds numbered lists, bare lists and malformed lists. Each parser is timed over the whole mix and
compared with ``json.loads`` (its errors caught) over the same strings: the ratio is the price of extraction,
schema validation and typed errors on top of bare JSON decoding. The outcome counts show how realistic the mix is.
Writes benchmarks/results/parser.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import time
from pathlib import Path

from skinflow.captions.parser import parse_caption, parse_diagnoses, render_caption
from skinflow.captions.schema import Caption
from skinflow.vocab import SCALAR_FIELDS, SET_FIELDS

REPO = Path(__file__).resolve().parents[1]
LABELS = ["melanoma", "basal cell carcinoma", "psoriasis", "eczema", "acne vulgaris", "seborrheic keratosis",
          "lichen planus", "tinea corporis", "vitiligo", "urticaria", "scabies", "rosacea"]
WORDS = "the lesion is red and scaly with a well defined border likely benign maybe psoriasis I cannot tell".split()
SYNONYMS = {"colour": ["red", "brownish"], "border_definition": ["well-circumscribed", "fuzzy"]}


def _junk(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))


def _caption_obj(rng: random.Random) -> dict:
    row = {f: rng.choice(v) for f, v in SCALAR_FIELDS.items()}
    for f, v in SET_FIELDS.items():
        row[f] = rng.sample([t for t in v if t != "none"], rng.randint(1, 3))
    return json.loads(render_caption(Caption.from_attributes(row)))


def caption_strings(n: int, rng: random.Random) -> tuple[list[str], collections.Counter]:
    out, kinds = [], collections.Counter()
    for _ in range(n):
        obj = _caption_obj(rng)
        r = rng.random()
        if r < 0.10:  # free-text synonyms the parser maps onto the vocabulary
            field = rng.choice(sorted(SYNONYMS))
            obj[field] = [rng.choice(SYNONYMS[field])] if isinstance(obj[field], list) else rng.choice(SYNONYMS[field])
        elif r < 0.15:
            obj["body_site"] = "left elbow region"  # off vocabulary
        text = json.dumps(obj, indent=2 if rng.random() < 0.3 else None, sort_keys=rng.random() < 0.5)
        r = rng.random()
        kind = "valid"
        if r < 0.15:
            text, kind = f"```json\n{text}\n```", "fenced"
        elif r < 0.25:
            text, kind = "Description: " + text + " " + _junk(rng), "prose"
        elif r < 0.40:
            text, kind = text[: rng.randint(1, len(text) - 1)], "truncated"
        elif r < 0.55:
            text, kind = _junk(rng), "garbage"
        elif r < 0.57:
            text, kind = "", "empty"
        out.append(text)
        kinds[kind] += 1
    return out, kinds


def diagnosis_strings(n: int, rng: random.Random) -> tuple[list[str], collections.Counter]:
    out, kinds = [], collections.Counter()
    for _ in range(n):
        items = rng.sample(LABELS, rng.randint(1, 6))
        r = rng.random()
        if r < 0.05:
            items = items + [items[0]]  # duplicate
        elif r < 0.10:
            items = rng.sample(LABELS, 7)  # too many
        r = rng.random()
        kind = "json"
        text = json.dumps({"diagnoses": items}, separators=(",", ":"))
        if r < 0.20:
            text, kind = "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1)), "numbered"
        elif r < 0.30:
            text, kind = json.dumps(items), "bare_list"
        elif r < 0.40:
            text, kind = f"```json\n{text}\n```", "fenced"
        elif r < 0.55:
            text, kind = text[: rng.randint(1, len(text) - 1)], "truncated"
        elif r < 0.70:
            text, kind = _junk(rng), "garbage"
        out.append(text)
        kinds[kind] += 1
    return out, kinds


def json_loads_all(texts: list[str]) -> None:
    for t in texts:
        try:
            json.loads(t)
        except ValueError:
            pass


def timed(fns: dict, texts: list[str], repeats: int) -> dict[str, list[float]]:
    """Seconds per pass for each function, passes interleaved so that load from other jobs hits all of them alike.
    The first pass of a parser includes warming its lazily built tables; min over passes is the least disturbed."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(texts)
            times[name].append(time.perf_counter() - t0)
    return times


def outcomes(parse, texts: list[str]) -> dict[str, int]:
    counts = collections.Counter("ok" if (r := parse(t)).ok else str(r.error.code) for t in texts)
    return dict(counts.most_common())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="strings per parser")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    cases = {
        "caption": (*caption_strings(args.n, rng), lambda ts: [parse_caption(t) for t in ts], parse_caption),
        "diagnosis": (*diagnosis_strings(args.n, rng), lambda ts: [parse_diagnoses(t) for t in ts], parse_diagnoses),
    }
    results: dict = {"n": args.n, "repeats": args.repeats, "seed": args.seed, "python": platform.python_version(),
                     "machine": platform.machine(), "loadavg_before": os.getloadavg()}
    for name, (texts, kinds, run_parser, parse) in cases.items():
        times = timed({"parser": run_parser, "json": json_loads_all}, texts, args.repeats)
        first, best, base = times["parser"][0], min(times["parser"]), min(times["json"])
        row = {
            "mix": dict(kinds.most_common()),
            "outcomes": outcomes(parse, texts),
            "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
            "json_loads_per_s": round(args.n / base, 1),
            "parser_per_s": round(args.n / best, 1),
            "parser_first_pass_per_s": round(args.n / first, 1),
            "parser_vs_json_loads_time_ratio": round(best / base, 2),
        }
        results[name] = row
        print(f"{name}: json.loads {row['json_loads_per_s']:,.0f}/s | parser {row['parser_per_s']:,.0f}/s "
              f"(first pass {row['parser_first_pass_per_s']:,.0f}/s) -> {row['parser_vs_json_loads_time_ratio']}x "
              f"the time of json.loads")
        print(f"  mix {row['mix']}\n  outcomes {row['outcomes']}")
    out = REPO / "benchmarks/results/parser.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
