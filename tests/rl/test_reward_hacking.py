"""Reward-hacking tables: scripted degenerate policies scored over a realistic sample of truths.

A policy maps one example (a Stage II true label, or a Stage I reference caption) to a completion.
Each table holds the mean total and the mean of every component per policy (a component that does
not apply to an example, NaN, is averaged over the examples where it applies). The intended order of
the means is written below as data (``*_TRUE_FORMS``, ``*_ORDER``, ``*_TIES``); every assertion
names the policies and the numbers. ``pytest -s`` prints both tables.

Stage II sample: 50 truths over a 20-label slice of the Fitzpatrick17k taxonomy (real nine/three
partition labels), 18 % malignant (Fitzpatrick17k: 13.7 %), psoriasis the majority class. Four
malignant labels have a benign look-alike (melanoma / nevus, BCC / seborrheic keratosis, SCC /
prurigo nodularis, Kaposi sarcoma / pyogenic granuloma), each pair equally frequent in the sample:
the two "hedge" policies, which cannot tell a pair apart, are then a 50/50 bet, the situation in
which training learned to lead with the benign guess.

Stage I sample: 24 reference captions drawn with a fixed seed from skewed attribute frequencies
(the i-th term of a field's vocabulary with weight 0.55**i, Fitzpatrick II-IV most common), so the
constant majority caption is a real competitor, as it is on real data.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from statistics import fmean
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import pytest

from skinflow.captions.parser import render_caption
from skinflow.captions.schema import Caption
from skinflow.vocab import SCALAR_FIELDS, SET_FIELDS
from skinflow.eval.equivalence import LabelSpace
from skinflow.rl.rewards import (
    Stage1RewardConfig,
    Stage2RewardConfig,
    malignant_first_threshold,
    stage1_components,
    stage2_components,
)

# ---- shared table machinery -----------------------------------------------------------------------


def table(policies: Mapping[str, Callable[[Any], str]], sample: Sequence[Any],
          score: Callable[[str, Any], dict[str, float]]) -> dict[str, dict[str, float]]:
    """policy -> {component: mean over the sample where applicable (NaN if nowhere), "total": mean}."""
    out = {}
    for name, policy in policies.items():
        rows = [score(policy(x), x) for x in sample]
        assert all(math.isfinite(r["total"]) for r in rows), name  # totality: junk in, numbers out
        out[name] = {key: (fmean(vals) if (vals := [r[key] for r in rows if not math.isnan(r[key])]) else math.nan)
                     for key in rows[0]}
    return out


def render(title: str, tab: Mapping[str, Mapping[str, float]]) -> str:
    keys = ["total", *(k for k in next(iter(tab.values())) if k != "total")]
    width, cols = max(map(len, tab)) + 2, [max(8, len(k) + 2) for k in keys]
    lines = [title, "policy".ljust(width) + "".join(k.rjust(c) for k, c in zip(keys, cols))]
    for name, row in sorted(tab.items(), key=lambda kv: -kv[1]["total"]):
        cells = ("—" if math.isnan(row[k]) else f"{row[k]:.3f}" for k in keys)
        lines.append(name.ljust(width) + "".join(v.rjust(c) for v, c in zip(cells, cols)))
    return "\n".join(lines)


def check_table(tab: Mapping[str, Mapping[str, float]], best: str, true_forms: Sequence[str],
                order: Sequence[tuple[str, str]], ties: Sequence[Sequence[str]]) -> None:
    total = {name: row["total"] for name, row in tab.items()}
    assert set(true_forms) | {b for pair in order for b in pair} | {t for group in ties for t in group} <= set(total)
    for name in true_forms:  # renderings of the true answer score exactly like it
        assert total[name] == pytest.approx(total[best]), f"{name} {total[name]:.3f} != {best} {total[best]:.3f}"
    for name, value in total.items():  # the true answer beats every scripted policy
        if name != best and name not in true_forms:
            assert total[best] > value + 1e-9, f"{best} {total[best]:.3f} does not beat {name} {value:.3f}"
    for better, worse in order:
        assert total[better] > total[worse] + 1e-9, \
            f"{better} {total[better]:.3f} should beat {worse} {total[worse]:.3f}"
    for group in ties:
        values = [total[name] for name in group]
        assert max(values) - min(values) < 1e-9, f"{group} should tie, got {[round(v, 3) for v in values]}"


# ---- Stage II -------------------------------------------------------------------------------------

TAXONOMY = pd.DataFrame(
    [
        ("melanoma", "malignant melanoma", "malignant"),
        ("malignant melanoma", "malignant melanoma", "malignant"),  # equivalent to melanoma
        ("lentigo maligna", "malignant melanoma", "malignant"),
        ("basal cell carcinoma", "malignant epidermal", "malignant"),
        ("squamous cell carcinoma", "malignant epidermal", "malignant"),
        ("actinic keratosis", "malignant epidermal", "malignant"),
        ("kaposi sarcoma", "malignant dermal", "malignant"),
        ("mycosis fungoides", "malignant cutaneous lymphoma", "malignant"),
        ("nevocytic nevus", "benign melanocyte", "benign"),
        ("congenital nevus", "benign melanocyte", "benign"),
        ("seborrheic keratosis", "benign epidermal", "benign"),
        ("prurigo nodularis", "benign epidermal", "benign"),
        ("pyogenic granuloma", "benign dermal", "benign"),
        ("dermatofibroma", "benign dermal", "benign"),
        ("psoriasis", "inflammatory", "non-neoplastic"),
        ("eczema", "inflammatory", "non-neoplastic"),
        ("lichen planus", "inflammatory", "non-neoplastic"),
        ("scabies", "inflammatory", "non-neoplastic"),
        ("acne vulgaris", "inflammatory", "non-neoplastic"),
        ("neurofibromatosis", "genodermatoses", "non-neoplastic"),
    ],
    columns=["label", "nine_partition_label", "three_partition_label"],
)
SPACE = LabelSpace(TAXONOMY)
LABELS = tuple(TAXONOMY["label"])
MALIGNANT = tuple(lab for lab in LABELS if SPACE.is_malignant(lab))
COUNTS = {"psoriasis": 9, "lichen planus": 6, "eczema": 5, "scabies": 4, "acne vulgaris": 4, "neurofibromatosis": 2,
          "dermatofibroma": 2, "nevocytic nevus": 3, "seborrheic keratosis": 3, "prurigo nodularis": 2,
          "pyogenic granuloma": 1, "melanoma": 3, "basal cell carcinoma": 3, "squamous cell carcinoma": 2,
          "kaposi sarcoma": 1}
TRUTHS = [label for label, n in COUNTS.items() for _ in range(n)]
MAJORITY = max(COUNTS, key=COUNTS.get)
PAIRS = {"melanoma": "nevocytic nevus", "basal cell carcinoma": "seborrheic keratosis",
         "squamous cell carcinoma": "prurigo nodularis", "kaposi sarcoma": "pyogenic granuloma"}
LOOKALIKE = {**PAIRS, **{b: m for m, b in PAIRS.items()}}
NEIGHBOUR = {"psoriasis": "eczema", "eczema": "psoriasis", "lichen planus": "psoriasis", "scabies": "eczema",
             "acne vulgaris": "scabies", "neurofibromatosis": "dermatofibroma", "dermatofibroma": "prurigo nodularis"}
SYNONYMS = {"psoriasis": ["psoriasis vulgaris", "plaque psoriasis"], "eczema": ["atopic dermatitis", "atopic eczema"],
            "lichen planus": ["LP"], "melanoma": ["MM", "malignant melanoma"], "dermatofibroma": ["DF"],
            "nevocytic nevus": ["nevus", "mole", "common nevus", "melanocytic naevus"],
            "basal cell carcinoma": ["BCC", "nodular basal cell carcinoma"],
            "seborrheic keratosis": ["SK", "seb keratosis"],
            "squamous cell carcinoma": ["SCC", "cutaneous squamous cell carcinoma"],
            "kaposi sarcoma": ["kaposis sarcoma"], "pyogenic granuloma": ["lobular capillary hemangioma"]}
FILLER = ["other", "unknown", "not sure", "see a doctor", "none of the above"]


def dx(*items: str) -> str:
    return json.dumps({"diagnoses": list(items)})


def differential(truth: str) -> list[str]:
    """Plausible others for ``truth``: its look-alike / neighbour, then labels of its nine, then three group."""
    near = [x for x in (LOOKALIKE.get(truth), NEIGHBOUR.get(truth)) if x]
    same = sorted(lab for lab in LABELS if SPACE.nine(lab) == SPACE.nine(truth))
    related = sorted(lab for lab in LABELS if SPACE.three(lab) == SPACE.three(truth))
    out = [x for x in dict.fromkeys(near + same + related) if not SPACE.equivalent(x, truth)]
    return out[:5]


def benign_guess(truth: str) -> str:
    """The benign label a model that leads with a benign guess would put first."""
    return LOOKALIKE[truth] if SPACE.is_malignant(truth) else truth


def hedge(truth: str, malignant_first: bool) -> str:
    """A model that cannot tell a look-alike pair apart lists both; otherwise truth and a neighbour."""
    if truth not in LOOKALIKE:
        return dx(truth, NEIGHBOUR[truth])
    m, b = (truth, LOOKALIKE[truth]) if SPACE.is_malignant(truth) else (LOOKALIKE[truth], truth)
    return dx(m, b) if malignant_first else dx(b, m)


def benign_first(truth: str, rank: int) -> str:
    """Oracle that leads with a benign label: a malignant truth goes to ``rank`` behind benign items."""
    if not SPACE.is_malignant(truth):
        return dx(truth, *differential(truth))
    benign = list(dict.fromkeys([benign_guess(truth), "dermatofibroma", "prurigo nodularis", "congenital nevus",
                                 "psoriasis"]))
    return dx(*benign[: rank - 1], truth)


def random_six(truth: str) -> str:
    return dx(*random.Random(f"six:{truth}").sample(LABELS, 6))


STAGE2_POLICIES: dict[str, Callable[[str], str]] = {
    "truth + differential": lambda t: dx(t, *differential(t)),
    "truth alone": lambda t: dx(t),
    "truth + OOV filler": lambda t: dx(t, *FILLER),
    "truth + its synonyms": lambda t: dx(t, *SYNONYMS.get(t, [])),
    "hedge, malignant first": lambda t: hedge(t, True),
    "hedge, benign first": lambda t: hedge(t, False),
    "benign first, truth 2nd": lambda t: benign_first(t, 2),
    "benign first, truth 6th": lambda t: benign_first(t, 6),
    "never malignant": lambda t: dx(benign_guess(t)),
    f"always {MAJORITY}": lambda t: dx(MAJORITY),
    f"{MAJORITY} synonyms": lambda t: dx(MAJORITY, *SYNONYMS[MAJORITY]),
    f"always {MAJORITY}, melanoma 6th": lambda t: dx(MAJORITY, "eczema", "lichen planus", "scabies", "acne vulgaris",
                                                      "melanoma"),
    "always melanoma": lambda t: dx("melanoma"),
    "all six malignant": lambda t: dx(*MALIGNANT[:6]),
    "six random labels": random_six,
    "duplicates": lambda t: dx(t, t),
    "empty list": lambda t: dx(),
    "prose": lambda t: f"This looks most like {t}, but a biopsy would confirm it.",
    "seven items": lambda t: dx(t, *(differential(t) + FILLER)[:6]),
    "truncated JSON": lambda t: dx(t, *differential(t))[:-4],
}
STAGE2_BEST = "truth + differential"
STAGE2_TRUE_FORMS = ("truth alone", "truth + OOV filler", "truth + its synonyms")
STAGE2_ORDER = (
    # At a 50/50 belief the malignant candidate should lead (threshold p* = 0.154 < 0.5).
    ("hedge, malignant first", "hedge, benign first"),
    # The earlier a malignant truth is named, the better; naming it sixth still beats never naming it.
    ("benign first, truth 2nd", "benign first, truth 6th"),
    ("benign first, truth 6th", "never malignant"),
    ("always psoriasis, melanoma 6th", "always psoriasis"),
    # Informed hedging beats blanket answers.
    ("hedge, benign first", "all six malignant"),
    ("hedge, benign first", "always psoriasis"),
    ("hedge, benign first", "six random labels"),
    # Any valid list beats junk (junk is "no list": no format, no relevance, malignant truths missed).
    ("always psoriasis", "prose"),
)
STAGE2_TIES = (
    ("duplicates", "empty list", "prose", "seven items", "truncated JSON"),  # all "no list"
    ("always psoriasis", "psoriasis synonyms"),  # synonyms of one label count once
)


def stage2_table(cfg: Stage2RewardConfig | None = None) -> dict[str, dict[str, float]]:
    cfg = cfg or Stage2RewardConfig()
    return table(STAGE2_POLICIES, TRUTHS, lambda text, truth: stage2_components(text, truth, SPACE, cfg))


def test_stage2_sample_is_realistic():
    malignant = sum(SPACE.is_malignant(t) for t in TRUTHS) / len(TRUTHS)
    assert len(TRUTHS) == 50 and 0.1 < malignant < 0.25 and Counter(TRUTHS).most_common(1)[0][0] == MAJORITY
    for m, b in PAIRS.items():  # each look-alike pair is a coin flip
        assert SPACE.is_malignant(m) and not SPACE.is_malignant(b) and COUNTS[m] == COUNTS[b]


def test_stage2_hacking_table():
    tab = stage2_table()
    print("\n" + render("Stage II reward, mean over 50 truths", tab))
    check_table(tab, STAGE2_BEST, STAGE2_TRUE_FORMS, STAGE2_ORDER, STAGE2_TIES)


# On malignant truths alone, leading with a malignant label (even the wrong one) must beat a dangerous
# error (a benign rank 1) even when the exact label follows at rank 2.
MALIGNANT_ORDER = (
    ("all six malignant", "benign first, truth 2nd"),
    ("always melanoma", "benign first, truth 2nd"),
    ("benign first, truth 2nd", "benign first, truth 6th"),
    ("benign first, truth 6th", "never malignant"),
)


def test_stage2_hacking_table_malignant_truths():
    cfg = Stage2RewardConfig()
    truths = [t for t in TRUTHS if SPACE.is_malignant(t)]
    tab = table(STAGE2_POLICIES, truths, lambda text, truth: stage2_components(text, truth, SPACE, cfg))
    print("\n" + render(f"Stage II reward, mean over the {len(truths)} malignant truths", tab))
    # On a malignant truth the malignant-first hedge lists the truth first: it is the true answer there.
    check_table(tab, STAGE2_BEST, (*STAGE2_TRUE_FORMS, "hedge, malignant first"), MALIGNANT_ORDER, ())


# ---- Stage II: expected reward under a belief ------------------------------------------------------

BELIEF_PAIRS = [("melanoma", "nevocytic nevus"), ("basal cell carcinoma", "seborrheic keratosis"),
                ("squamous cell carcinoma", "prurigo nodularis"), ("mycosis fungoides", "eczema"),
                ("kaposi sarcoma", "psoriasis")]
RESTS = [(), ("scabies", "dermatofibroma"), ("lentigo maligna", "other", "acne vulgaris", "actinic keratosis")]


def expected_total(items: Sequence[str], belief: Mapping[str, float], cfg: Stage2RewardConfig) -> float:
    return sum(p * stage2_components(dx(*items), truth, SPACE, cfg)["total"] for truth, p in belief.items())


def order_gain(m: str, b: str, p: float, rest: Sequence[str] = (), cfg: Stage2RewardConfig | None = None) -> float:
    """E[total | [M, B, *rest]] - E[total | [B, M, *rest]] with belief p on M, 1 - p on B."""
    cfg = cfg or Stage2RewardConfig()
    belief = {m: p, b: 1 - p}
    return expected_total([m, b, *rest], belief, cfg) - expected_total([b, m, *rest], belief, cfg)


@pytest.mark.parametrize("rest", RESTS)
@pytest.mark.parametrize(("m", "b"), BELIEF_PAIRS)
def test_malignant_first_pays_at_even_odds(m, b, rest):
    assert SPACE.is_malignant(m) and not SPACE.is_malignant(b) and not SPACE.equivalent(m, b)
    cfg = Stage2RewardConfig()
    print(f"\n50/50 {m} vs {b}, rest {list(rest)}: E[M first] = "
          f"{expected_total([m, b, *rest], {m: .5, b: .5}, cfg):.4f}, "
          f"E[B first] = {expected_total([b, m, *rest], {m: .5, b: .5}, cfg):.4f}")
    assert order_gain(m, b, 0.5, rest) > 0.2
    assert order_gain(m, b, 0.4, rest) > 0.0  # benign-favoured 40/60: malignant first still pays


def test_threshold_belief_where_the_order_flips():
    """p* = ((1-d2)*w*e + f) / ((1-d2)*(2*w*e + m) + f) = 0.1537 with the defaults (dcg d2 = 0.6309,
    w = relevance_weight = 1, e = rel_exact = 1, m = missed_malignant_penalty = 6, f = false_alarm_penalty
    = 0.1, chosen on validation): list the malignant candidate first once its probability exceeds 15 %."""
    cfg = Stage2RewardConfig()
    p_star = malignant_first_threshold(cfg)
    assert p_star == pytest.approx(0.1537, abs=1e-4)
    for m, b in BELIEF_PAIRS:
        for rest in RESTS:
            g0, g1 = order_gain(m, b, 0.0, rest), order_gain(m, b, 1.0, rest)  # the gain is linear in p
            assert -g0 / (g1 - g0) == pytest.approx(p_star)
            assert order_gain(m, b, p_star - 0.01, rest) < 0 < order_gain(m, b, p_star + 0.01, rest)
            assert order_gain(m, b, 0.1, rest) < 0  # at 10 % the benign label should lead


@pytest.mark.parametrize("overrides", [{"discount": "reciprocal"}, {"missed_malignant_penalty": 1.0},
                                       {"false_alarm_penalty": 0.0, "relevance_weight": 0.5},
                                       {"missed_malignant_penalty": 4.0, "rel_exact": 0.8, "scale": 3.0}])
def test_threshold_formula_other_configs(overrides):
    cfg = Stage2RewardConfig(**overrides)
    g0, g1 = (order_gain("melanoma", "nevocytic nevus", p, cfg=cfg) for p in (0.0, 1.0))
    assert -g0 / (g1 - g0) == pytest.approx(malignant_first_threshold(cfg))


# ---- Stage I --------------------------------------------------------------------------------------

S1_LABELS = ("psoriasis", "lichen planus", "eczema", "melanoma", "basal cell carcinoma", "striae")


def _skewed(rng: random.Random, terms: Sequence[str], k: int = 1) -> list[str]:
    """``k`` distinct terms, the i-th term of the vocabulary drawn with weight 0.55**i."""
    pool, out = list(terms), []
    for _ in range(k):
        pick = rng.choices(pool, weights=[0.55 ** i for i in range(len(pool))])[0]
        pool.remove(pick)
        out.append(pick)
    return out


def _reference(rng: random.Random) -> Caption:
    row: dict[str, Any] = {f: _skewed(rng, v)[0] for f, v in SCALAR_FIELDS.items()}
    row["fitzpatrick_type"] = rng.choices(["I", "II", "III", "IV", "V", "VI"], [1, 3, 4, 3, 2, 1])[0]
    for f, v in SET_FIELDS.items():
        row[f] = _skewed(rng, [t for t in v if t != "none"], rng.choice([1, 1, 2]))
    return Caption.from_attributes(row)


_RNG = random.Random(17)
REFERENCES = [(render_caption(_reference(_RNG)), S1_LABELS[i % 5]) for i in range(24)]  # (caption, diagnosis)


def _fields(text: str) -> dict[str, Any]:
    obj = json.loads(text)
    obj.pop("summary")
    return obj


def _mode_caption() -> str:
    rows = [_fields(ref) for ref, _ in REFERENCES]
    mode = {f: Counter(r[f] if f in SCALAR_FIELDS else tuple(r[f]) for r in rows).most_common(1)[0][0]
            for f in rows[0]}
    return render_caption(Caption.from_attributes(mode))


MODE_CAPTION = _mode_caption()


def _edit(ref: str, **changes: Any) -> str:
    return json.dumps({**json.loads(ref), **changes})


def _one_wrong(ref: str) -> str:
    site = json.loads(ref)["body_site"]
    return _edit(ref, body_site=next(s for s in SCALAR_FIELDS["body_site"] if s != site))


def _stuffed(ref: str) -> str:
    """Keyword stuffing: every set field lists its whole vocabulary, scalars from the majority caption."""
    row = {**_fields(MODE_CAPTION), **{f: [t for t in v if t != "none"] for f, v in SET_FIELDS.items()}}
    return render_caption(Caption.from_attributes(row))


def _next_image(ref: str) -> str:
    i = next(j for j, (r, _) in enumerate(REFERENCES) if r == ref)
    return REFERENCES[(i + 1) % len(REFERENCES)][0]


STAGE1_POLICIES: dict[str, Callable[[tuple[str, str]], str]] = {
    "reference": lambda x: x[0],
    "reference, fenced": lambda x: f"```json\n{x[0]}\n```",
    "reference, indented": lambda x: json.dumps(json.loads(x[0]), indent=2),
    "reference, one field wrong": lambda x: _one_wrong(x[0]),
    "reference naming the diagnosis": lambda x: _edit(x[0], summary=f"Lesions typical of {x[1]}."),
    "reference + padding": lambda x: x[0] + "\n" + "Note: see the fields above. " * 100,
    "reference x3 (runaway)": lambda x: x[0] * 3,
    "majority caption": lambda x: MODE_CAPTION,
    "another image's caption": lambda x: _next_image(x[0]),
    "every term listed": lambda x: _stuffed(x[0]),
    "empty": lambda x: "",
    "empty object": lambda x: "{}",
    "summary only": lambda x: json.dumps({"summary": json.loads(x[0])["summary"]}),
    "prose": lambda x: json.loads(x[0])["summary"],
    "truncated JSON": lambda x: x[0][: len(x[0]) // 2],
    "prose naming the diagnosis": lambda x: f"This is {x[1]}.",
    "extra diagnosis key": lambda x: _edit(x[0], diagnosis=x[1]),
}
STAGE1_BEST = "reference"
STAGE1_TRUE_FORMS = ("reference, fenced", "reference, indented")
STAGE1_ORDER = (
    # Leaking the diagnosis or padding costs more than one wrong field; an honest guess beats stuffing.
    ("reference, one field wrong", "reference naming the diagnosis"),
    ("reference, one field wrong", "reference + padding"),
    ("reference, one field wrong", "majority caption"),
    ("majority caption", "every term listed"),
    # A valid caption beats junk, and junk that names a diagnosis is worse than silent junk.
    ("majority caption", "empty"),
    ("another image's caption", "empty"),
    ("empty", "prose naming the diagnosis"),
)
STAGE1_TIES = (
    ("empty", "empty object", "summary only", "prose", "truncated JSON"),  # unparseable, nothing named
    ("prose naming the diagnosis", "extra diagnosis key"),
)


def stage1_table(cfg: Stage1RewardConfig | None = None) -> dict[str, dict[str, float]]:
    cfg = cfg or Stage1RewardConfig()
    return table(STAGE1_POLICIES, REFERENCES, lambda text, x: stage1_components(text, x[0], S1_LABELS, cfg))


def test_stage1_sample_is_varied():
    assert len({ref for ref, _ in REFERENCES}) == len(REFERENCES)
    assert MODE_CAPTION not in {ref for ref, _ in REFERENCES}


def test_stage1_hacking_table():
    tab = stage1_table()
    print("\n" + render("Stage I reward, mean over 24 reference captions", tab))
    check_table(tab, STAGE1_BEST, STAGE1_TRUE_FORMS, STAGE1_ORDER, STAGE1_TIES)
