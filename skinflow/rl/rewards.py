"""Reward functions for Stage I (schema captions) and Stage II (ranked top-6 diagnoses).

Rewards are sums of NAMED components so each can be logged and audited separately. Every function
here is pure and total: any completion (junk, truncated JSON, chat messages) yields finite numbers,
never an exception. The only NaNs are "not applicable" components (no valid reference caption, a
true label outside the taxonomy, the safety part that does not apply to this truth); they count as 0
in ``total`` and reach TRL as ``None``.

Stage I  total = scale * (format_weight*format + fields_weight*fields - diagnosis_penalty - length_penalty)
    format            {0,1}   1 when the completion parses as a Caption (tolerated wrappers allowed)
    fields            [0,1]   weighted mean per-field agreement with the reference (``field_scores``)
    diagnosis_penalty {0,p}   p = cfg.diagnosis_penalty when a diagnosis is named (see below)
    length_penalty    [0,cap] per_100 * (chars over budget) / 100, capped
Stage II total = scale * (format_weight*format + relevance_weight*relevance - safety_penalty
                          - oov_penalty*oov_rate)
    c_1..c_n  the candidates: parsed items mapped to canonical labels, a label repeated through an
              alias kept only at its first rank, OOV items (None) keeping their slot, the first
              k = effective_k(n_classes) items (``skinflow.eval.metrics.candidates``: evaluation's ranks)
    r*        rank of the first malignant candidate, None when there is none or no list
              (``skinflow.eval.metrics.first_malignant_rank``, shared with evaluation)
    format         {0,1}          1 when the list parses (JSON or numbered, no duplicates, <= 6 items)
    relevance      [0,rel_exact]  max_i rel(c_i) * discount(i)   (see ``relevance_of``)
    top1           {0,1}          c_1 equivalent to the truth (monitor only)
    malignant_miss [0,1]          truth malignant: 1 - discount(r*), or 1 when r* is None; else NaN
    over_call      {0,1}          truth not malignant: 1 when r* == 1; else NaN
    safety_penalty = missed_malignant_penalty * malignant_miss + false_alarm_penalty * over_call
    oov_rate       [0,1]          unmappable items / listed items
    A malignant truth thus costs m = missed_malignant_penalty times 0 when a malignant candidate
    leads, 1 - discount(2) = 0.369 when the first one is second, 0.644 when it is sixth (DCG) and 1
    when none is listed or the output is no list; ``discount="none"`` would restore "any rank will
    do". In evaluation's terms: malignant_miss == 0 iff not malignant_miss_at1, == 1 iff
    malignant_miss_at{k}, and a dangerous error (benign rank 1) costs at least 0.369 * m.
    Decision rule (``malignant_first_threshold``): with belief p on a malignant label M and 1 - p on
    an unrelated benign label B, [M, B, ...] earns more in expectation than [B, M, ...] iff p > p* =
    ((1-d2)*w*e + f) / ((1-d2)*(2*w*e + m) + f), d2 = discount(2), w = relevance_weight,
    e = rel_exact, f = false_alarm_penalty. Defaults (dcg, w = e = 1, m = 6, f = 0.1): p* = 0.154;
    with m = 2, f = 0.25 (before validation tuning) it was 0.359.
    The earlier rule, which cleared the miss for a malignant candidate at any rank, gave p* = 0.627
    whatever m, and training learned to lead with the benign guess.

Design decisions:
* An invalid list (duplicates, > 6 items, unparseable) is "no list": format 0, relevance 0, and the
  safety rules still apply (a malignant truth is then missed). Salvaging the first 6 / deduplicated
  items would let the policy pad or repeat guesses for free, and exempting junk from the safety
  penalty would make junk better than an honest benign list.
* The parser rejects a summary naming a diagnosis (DIAGNOSIS_IN_SUMMARY). That code has the lowest
  priority, so it means nothing else is wrong: we re-validate with a placeholder summary, credit format
  and fields, and charge ``diagnosis_penalty`` separately, so leakage costs exactly the penalty rather
  than the whole reward. Unparseable text is scanned whole, so junk naming a diagnosis is never better
  than a valid caption that does. Multi-word vocabulary terms are masked before scanning: the
  Fitzpatrick17k label ``striae`` would otherwise hit the allowed term ``white_striae``.
* The summary's wording is not scored (only leakage): structured fields are the Stage I target.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from pydantic import Field, field_validator, model_validator

from skinflow.captions.diagnosis_terms import mentions_diagnosis
from skinflow.captions.metrics import FIELDS, field_scores
from skinflow.captions.parser import MAX_INPUT_CHARS, ParseErrorCode, parse_caption, parse_diagnoses
from skinflow.captions.schema import Caption
from skinflow.vocab import SCALAR_FIELDS, SET_FIELDS
from skinflow.config import Section
from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.metrics import candidates, effective_k, first_malignant_rank

NAN = float("nan")
_PARSE_CACHE = 16384  # distinct completions kept; a GRPO step has at most a few hundred


class Stage1RewardConfig(Section):
    format_weight: float = Field(0.2, ge=0)
    fields_weight: float = Field(1.0, ge=0)
    # Missing fields default to 1.0, so params.yaml can override just a few.
    field_weights: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(FIELDS, 1.0))
    diagnosis_penalty: float = Field(0.5, ge=0)
    length_budget_chars: int = Field(800, ge=1)  # compact caption ~560 chars, indented ~660
    length_penalty_per_100_chars: float = Field(0.1, ge=0)
    length_penalty_cap: float = Field(0.5, ge=0)
    scale: float = Field(1.0, gt=0)

    @field_validator("field_weights")
    @classmethod
    def _complete_weights(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown caption fields {unknown}; known: {list(FIELDS)}")
        full = {**dict.fromkeys(FIELDS, 1.0), **value}
        if any(w < 0 or not math.isfinite(w) for w in full.values()) or sum(full.values()) <= 0:
            raise ValueError("field weights must be finite, >= 0 and not all 0")
        return full


class Stage2RewardConfig(Section):
    format_weight: float = Field(0.2, ge=0)
    relevance_weight: float = Field(1.0, ge=0)
    rel_exact: float = Field(1.0, ge=0, le=1)   # exact or clinically equivalent label
    rel_nine: float = Field(0.5, ge=0, le=1)    # same nine-partition group
    rel_three: float = Field(0.2, ge=0, le=1)   # same three-partition group
    discount: Literal["dcg", "reciprocal", "none"] = "dcg"
    # Malignant truth: this times 1 - discount(rank of the first malignant candidate), all of it when
    # none is listed. 6.0 (with false_alarm 0.1) makes "malignant first" the better bet from p* = 0.154
    # (module docstring); chosen on the validation split (params.yaml, reports/tuning/stage2.md).
    missed_malignant_penalty: float = Field(6.0, ge=0)
    false_alarm_penalty: float = Field(0.1, ge=0)      # non-malignant truth, malignant rank 1
    oov_penalty: float = Field(0.0, ge=0)               # times the fraction of unmappable items
    scale: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Stage2RewardConfig:
        if not self.rel_exact >= self.rel_nine >= self.rel_three:
            raise ValueError("need rel_exact >= rel_nine >= rel_three")
        return self


def discount(rank: int, kind: str = "dcg") -> float:
    """Weight of 1-based ``rank``; 1.0 at rank 1 for every kind (DCG: 1/log2(rank+1))."""
    if kind == "dcg":
        return 1.0 / math.log2(rank + 1)
    return 1.0 / rank if kind == "reciprocal" else 1.0


def malignant_first_threshold(cfg: Stage2RewardConfig) -> float:
    """Belief p* in a malignant label above which listing it before an unrelated benign one pays.

    Expected totals for beliefs (p on malignant M, 1 - p on benign B, no relevance between them, the
    rest of the list shared): [M, B]: p*w*e + (1-p)*(w*e*d2 - f); [B, M]: p*(w*e*d2 - m*(1-d2)) +
    (1-p)*w*e; equal at the returned p (module docstring). NaN when the order never matters
    (``discount="none"`` and no over-call penalty).
    """
    gap, we = 1.0 - discount(2, cfg.discount), cfg.relevance_weight * cfg.rel_exact
    den = gap * (2 * we + cfg.missed_malignant_penalty) + cfg.false_alarm_penalty
    return (gap * we + cfg.false_alarm_penalty) / den if den > 0 else NAN


# ---- completion text ----------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """Text of a TRL completion: a string, or chat messages whose content is a string or parts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, Mapping)]
        # With tool calls there can be several turns; the last assistant turn carries the answer.
        turns = [m for m in messages if m.get("role") == "assistant"] or messages
        if turns:
            return _content_text(turns[-1].get("content"))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return ""


def _z(value: float) -> float:
    return 0.0 if math.isnan(value) else value


# ---- Stage I ------------------------------------------------------------------------------------

# Multi-word vocabulary terms and field names, any separator, masked before diagnosis screening.
_MULTIWORD = sorted({t for terms in {**SCALAR_FIELDS, **SET_FIELDS}.values() for t in terms if "_" in t}
                    | {f for f in FIELDS if "_" in f}, key=len, reverse=True)
_VOCAB_PHRASE = re.compile(
    r"(?<![^\W_])(?:" + "|".join(r"[\s_\-]+".join(map(re.escape, t.split("_"))) for t in _MULTIWORD) + r")(?![^\W_])",
    re.IGNORECASE,
)


def names_diagnosis(text: str, labels: tuple[str, ...] = ()) -> bool:
    """True if ``text`` names a diagnosis outside the caption vocabulary's own multi-word terms."""
    text = text[:MAX_INPUT_CHARS]  # bound the cost on runaway output
    return bool(mentions_diagnosis(text, labels)) and bool(mentions_diagnosis(_VOCAB_PHRASE.sub(" ", text), labels))


@lru_cache(maxsize=_PARSE_CACHE)
def parse_caption_lenient(text: str) -> Caption | None:
    """Caption or None; a summary naming a diagnosis is kept (the reward penalises it separately)."""
    result = parse_caption(text)
    if result.ok or result.error is None or result.error.code is not ParseErrorCode.DIAGNOSIS_IN_SUMMARY:
        return result.caption
    try:
        # DIAGNOSIS_IN_SUMMARY is reported only when nothing else failed, so the object after the
        # first "{" decodes; re-validate it with a neutral summary, then restore the real one.
        obj, _ = json.JSONDecoder().raw_decode(text, text.index("{"))
        retry = parse_caption(json.dumps({**obj, "summary": "placeholder."}))
        return retry.caption.model_copy(update={"summary": obj["summary"].strip()}) if retry.ok else None
    except Exception:  # noqa: BLE001 - totality: an unforeseen shape just means "unparseable"
        return None


def stage1_components(completion: Any, reference_caption_json: Any, labels: Iterable[str],
                      cfg: Stage1RewardConfig) -> dict[str, float]:
    """Named Stage I components plus ``total`` (see the module docstring for ranges)."""
    text = completion_text(completion)
    labels = labels if isinstance(labels, tuple) else tuple(labels)
    pred = parse_caption_lenient(text)
    ref = parse_caption_lenient(reference_caption_json) if isinstance(reference_caption_json, str) else None
    if ref is None:
        fields = NAN  # no reference: agreement is not applicable (TRL gets None)
    else:
        scores, weights = field_scores(pred, ref), cfg.field_weights
        fields = sum(weights[f] * scores[f] for f in FIELDS) / sum(weights.values())
    screened = pred.summary if pred is not None else text
    diagnosis = cfg.diagnosis_penalty if names_diagnosis(screened, labels) else 0.0
    excess = max(0, len(text) - cfg.length_budget_chars)
    length = min(cfg.length_penalty_cap, cfg.length_penalty_per_100_chars * excess / 100)
    comps = {"format": float(pred is not None), "fields": fields, "diagnosis_penalty": diagnosis,
             "length_penalty": length}
    comps["total"] = sum(_z(v) for v in stage1_contributions(comps, cfg).values())
    return comps


def stage1_contributions(comps: Mapping[str, float], cfg: Stage1RewardConfig) -> dict[str, float]:
    """Signed, scaled share of each component in ``total`` (NaN stays NaN); these are what TRL sees.

    Penalties are written ``0.0 - x`` so an absent penalty is logged as 0.0, not -0.0.
    """
    return {"format": cfg.scale * cfg.format_weight * comps["format"],
            "fields": cfg.scale * cfg.fields_weight * comps["fields"],
            "diagnosis": 0.0 - cfg.scale * comps["diagnosis_penalty"],
            "length": 0.0 - cfg.scale * comps["length_penalty"]}


# ---- Stage II -----------------------------------------------------------------------------------

_parse_list = lru_cache(maxsize=_PARSE_CACHE)(parse_diagnoses)


@lru_cache(maxsize=16)
def _hierarchy(space: LabelSpace) -> dict[str, tuple[str | None, str | None, bool]]:
    # label -> (nine, three, malignant), read once per space: pandas .at lookups are slow per item.
    return {label: (space.nine(label), space.three(label), space.is_malignant(label)) for label in space.labels}


def relevance_of(candidate: str | None, truth: str, space: LabelSpace, cfg: Stage2RewardConfig) -> float:
    """rel_exact / rel_nine / rel_three / 0 for a mapped candidate label against the true label."""
    if candidate is None:
        return 0.0
    if space.equivalent(candidate, truth):
        return cfg.rel_exact
    h = _hierarchy(space)
    (c_nine, c_three, _), (t_nine, t_three, _) = h[candidate], h[truth]
    if c_nine is not None and c_nine == t_nine:
        return cfg.rel_nine
    return cfg.rel_three if c_three is not None and c_three == t_three else 0.0


def stage2_components(completion: Any, true_label: Any, space: LabelSpace,
                      cfg: Stage2RewardConfig) -> dict[str, float]:
    """Named Stage II components plus ``total`` (see the module docstring for ranges)."""
    parsed = _parse_list(completion_text(completion))
    mapped = [space.map(d).label for d in parsed.diagnoses] if parsed.ok else []
    cands = candidates(mapped, effective_k(space.n_classes))
    truth = space.map(true_label).label if isinstance(true_label, str) else None
    if truth is None:  # a label outside the taxonomy: nothing to grade against
        relevance = top1 = miss = over_call = safety = NAN
    else:
        hierarchy = _hierarchy(space)  # label -> (nine, three, malignant)
        relevance = max((relevance_of(c, truth, space, cfg) * discount(rank, cfg.discount)
                         for rank, c in enumerate(cands, 1)), default=0.0)
        top1 = float(bool(cands) and space.equivalent(cands[0], truth))
        first = first_malignant_rank(cands, lambda label: hierarchy[label][2])
        if hierarchy[truth][2]:
            miss, over_call = (1.0 if first is None else 1.0 - discount(first, cfg.discount)), NAN
            safety = cfg.missed_malignant_penalty * miss
        else:
            miss, over_call = NAN, float(first == 1)
            safety = cfg.false_alarm_penalty * over_call
    oov_rate = sum(m is None for m in mapped) / len(mapped) if mapped else 0.0
    comps = {"format": float(parsed.ok), "relevance": relevance, "top1": top1, "malignant_miss": miss,
             "over_call": over_call, "safety_penalty": safety, "oov_rate": oov_rate}
    comps["total"] = sum(_z(v) for v in stage2_contributions(comps, cfg).values())
    return comps


def stage2_contributions(comps: Mapping[str, float], cfg: Stage2RewardConfig) -> dict[str, float]:
    return {"format": cfg.scale * cfg.format_weight * comps["format"],
            "relevance": cfg.scale * cfg.relevance_weight * comps["relevance"],
            "safety": 0.0 - cfg.scale * comps["safety_penalty"],
            "oov": 0.0 - cfg.scale * cfg.oov_penalty * comps["oov_rate"]}


# ---- TRL adapters ---------------------------------------------------------------------------------

RewardFunc = Callable[..., list]


def _reward_funcs(stage: str, column: str, compute: Callable[[str, Any], dict[str, float]],
                  contributions: Callable[[Mapping[str, float]], dict[str, float]],
                  names: Sequence[str], monitors: Sequence[str]) -> list[RewardFunc]:
    """One TRL reward function per contribution, named ``<stage>_<component>``.

    TRL 1.16 calls ``f(prompts=, completions=, completion_ids=, **dataset_columns, trainer_state=,
    log_extra=, log_metric=)`` and logs ``rewards/<__name__>/mean``; with the default
    ``multi_objective_aggregation="sum_then_normalize"`` and unit ``reward_weights`` it optimises the
    sum of the functions, which equals ``total``. All functions share one cache keyed by
    (completion text, column value), so a completion is parsed and scored once per step.
    """
    cached = lru_cache(maxsize=4096)(compute)

    def rows(completions: Sequence[Any], kwargs: dict[str, Any]) -> list[dict[str, float]]:
        if column not in kwargs:
            raise ValueError(f"{stage} rewards need the dataset column {column!r}; got {sorted(kwargs)}")
        values = kwargs[column]
        if len(values) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(values)} {column!r} values")
        return [cached(completion_text(c), v if isinstance(v, str) else None) for c, v in zip(completions, values)]

    def make(name: str, log_monitors: bool) -> RewardFunc:
        def reward(prompts=None, completions=(), completion_ids=None, **kwargs) -> list[float | None]:
            comps = rows(completions, kwargs)
            log_metric = kwargs.get("log_metric")
            if log_monitors and callable(log_metric):  # monitoring-only values, logged once per step
                for key in monitors:
                    vals = [c[key] for c in comps if not math.isnan(c[key])]
                    if vals:
                        log_metric(f"rewards/{stage}_{key}/mean", sum(vals) / len(vals))
            out = [contributions(c)[name] for c in comps]
            return [None if math.isnan(v) else v for v in out]

        reward.__name__ = reward.__qualname__ = f"{stage}_{name}"
        return reward

    return [make(name, i == 0) for i, name in enumerate(names)]


def make_stage1_reward_funcs(cfg: Stage1RewardConfig, labels: Iterable[str]) -> list[RewardFunc]:
    """``stage1_format``, ``stage1_fields``, ``stage1_diagnosis``, ``stage1_length`` (reads ``reference_caption``)."""
    labels = tuple(labels)
    return _reward_funcs("stage1", "reference_caption",
                         lambda text, ref: stage1_components(text, ref, labels, cfg),
                         lambda c: stage1_contributions(c, cfg), ("format", "fields", "diagnosis", "length"),
                         monitors=("fields",))


def make_stage2_reward_funcs(cfg: Stage2RewardConfig, space: LabelSpace) -> list[RewardFunc]:
    """``stage2_format``, ``stage2_relevance``, ``stage2_safety``, ``stage2_oov`` (reads ``label``)."""
    return _reward_funcs("stage2", "label", lambda text, label: stage2_components(text, label, space, cfg),
                         lambda c: stage2_contributions(c, cfg), ("format", "relevance", "safety", "oov"),
                         monitors=("top1", "malignant_miss", "over_call", "oov_rate"))


def clear_caches() -> None:
    """Drop the module-level parse caches (benchmarks measure cold throughput)."""
    parse_caption_lenient.cache_clear()
    _parse_list.cache_clear()
    _hierarchy.cache_clear()
