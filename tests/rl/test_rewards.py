"""Stage I / Stage II reward functions: hand-computed values, properties and the TRL adapters."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skinflow.captions.parser import render_caption
from skinflow.captions.schema import Caption
from skinflow.vocab import SCALAR_FIELDS, SET_FIELDS
from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.metrics import image_indicators
from skinflow.eval.predictions import map_predictions
from skinflow.rl.rewards import (
    Stage1RewardConfig,
    Stage2RewardConfig,
    clear_caches,
    discount,
    make_stage1_reward_funcs,
    make_stage2_reward_funcs,
    parse_caption_lenient,
    stage1_components,
    stage2_components,
)

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TAXONOMY = pd.DataFrame(
    [
        ("melanoma", "malignant melanoma", "malignant"),
        ("malignant melanoma", "malignant melanoma", "malignant"),  # equivalent to melanoma (yaml table)
        ("lentigo maligna", "malignant melanoma", "malignant"),
        ("basal cell carcinoma", "malignant epidermal", "malignant"),
        ("squamous cell carcinoma", "malignant epidermal", "malignant"),
        ("seborrheic keratosis", "benign epidermal", "benign"),
        ("nevocytic nevus", "benign melanocyte", "benign"),
        ("dermatofibroma", "benign dermal", "benign"),
        ("psoriasis", "inflammatory", "non-neoplastic"),
        ("eczema", "inflammatory", "non-neoplastic"),
        ("lichen planus", "inflammatory", "non-neoplastic"),
        ("ichthyosis vulgaris", "genodermatoses", "non-neoplastic"),
    ],
    columns=["label", "nine_partition_label", "three_partition_label"],
)
SPACE = LabelSpace(TAXONOMY)
LABELS = tuple(TAXONOMY["label"])
MALIGNANT = tuple(lab for lab in LABELS if SPACE.is_malignant(lab))
NON_MALIGNANT = tuple(lab for lab in LABELS if not SPACE.is_malignant(lab))
OOV = ("zebra rash", "quux syndrome", "blorp")
C2 = Stage2RewardConfig()
C1 = Stage1RewardConfig()
S2_LO = -C2.scale * (max(C2.missed_malignant_penalty, C2.false_alarm_penalty) + C2.oov_penalty)
S2_HI = C2.scale * (C2.format_weight + C2.relevance_weight * C2.rel_exact)
S1_LO = -C1.scale * (C1.diagnosis_penalty + C1.length_penalty_cap)
S1_HI = C1.scale * (C1.format_weight + C1.fields_weight)


def dx(*items: str) -> str:
    return json.dumps({"diagnoses": list(items)})


def s2(items_or_text, truth: str, cfg: Stage2RewardConfig = C2) -> dict[str, float]:
    text = items_or_text if isinstance(items_or_text, str) else dx(*items_or_text)
    return stage2_components(text, truth, SPACE, cfg)


def irrelevant_to(truth: str) -> tuple[str, ...]:
    return tuple(lab for lab in LABELS if SPACE.three(lab) != SPACE.three(truth)) + OOV


# ---- Stage II -----------------------------------------------------------------------------------

D2, D3 = 1 / math.log2(3), 1 / math.log2(4)
M = C2.missed_malignant_penalty
# The hand-computed rows below spell out m = 2 and f = 0.25, whatever the shipped defaults are.
HAND = Stage2RewardConfig(missed_malignant_penalty=2.0, false_alarm_penalty=0.25)


# Rows with a malignant truth and a benign rank 1 used to pay no safety penalty as long as some
# malignant label appeared anywhere; that rewarded leading with the benign guess (RL learned it), so
# the penalty now shrinks with the rank of the first malignant candidate: M * (1 - discount(rank)).
@pytest.mark.parametrize(
    ("completion", "truth", "expected"),
    [
        # equivalent label at rank 2 behind a benign one: 0.2 + 1/log2(3) - 2 * (1 - 1/log2(3))
        (dx("seborrheic keratosis", "malignant melanoma", "psoriasis"), "melanoma", 0.2 + D2 - 2 * (1 - D2)),
        # same nine-partition at rank 2, first malignant candidate at rank 2
        (dx("nevocytic nevus", "lentigo maligna"), "melanoma", 0.2 + 0.5 * D2 - 2 * (1 - D2)),
        # numbered list of aliases (nevus, SK): malignant truth missed -> 0.2 - 2.0
        ("1. nevus\n2. SK", "melanoma", 0.2 - 2.0),
        # benign truth, malignant rank 1 (BCC alias) + same nine at rank 2: 0.2 + 0.5/log2(3) - 0.25
        (dx("BCC", "eczema"), "psoriasis", 0.2 + 0.5 * D2 - 0.25),
        # same nine-partition, first malignant candidate at rank 3: 0.2 + 0.5/log2(4) - 2 * (1 - 1/log2(4))
        (dx("nevocytic nevus", "dermatofibroma", "basal cell carcinoma"), "squamous cell carcinoma",
         0.2 + 0.5 * D3 - 2 * (1 - D3)),
        (dx("nevocytic nevus", "dermatofibroma", "ichthyosis vulgaris"), "psoriasis", 0.2 + 0.2 * D3),
        ("it is probably melanoma", "melanoma", -2.0),  # unparseable: no list, malignant missed
        # malignant first, exact label second: no safety penalty
        (dx("basal cell carcinoma", "melanoma"), "melanoma", 0.2 + D2),
        # an alias repeating rank 1 takes no slot (evaluation's candidates): melanoma counts as rank 2
        (dx("nevus", "mole", "melanoma"), "melanoma", 0.2 + D2 - 2 * (1 - D2)),
    ],
)
def test_stage2_hand_computed(completion, truth, expected):
    assert s2(completion, truth, HAND)["total"] == pytest.approx(expected)


def test_stage2_components_of_a_perfect_answer():
    c = s2(["melanoma", "nevocytic nevus"], "melanoma")
    assert math.isnan(c.pop("over_call"))  # over-calling only applies to a non-malignant truth
    assert c == {"format": 1.0, "relevance": 1.0, "top1": 1.0, "malignant_miss": 0.0, "safety_penalty": 0.0,
                 "oov_rate": 0.0, "total": pytest.approx(1.2)}
    b = s2(["psoriasis", "melanoma"], "psoriasis")
    assert math.isnan(b["malignant_miss"]) and b["over_call"] == 0.0 and b["total"] == pytest.approx(1.2)


def _check_stage2_bounds(c: dict[str, float]) -> None:
    assert c["format"] in (0.0, 1.0) and c["top1"] in (0.0, 1.0)
    assert 0.0 <= c["relevance"] <= C2.rel_exact and 0.0 <= c["oov_rate"] <= 1.0
    assert 0.0 <= c["safety_penalty"] <= max(C2.missed_malignant_penalty, C2.false_alarm_penalty)
    miss, over = c["malignant_miss"], c["over_call"]
    assert math.isnan(miss) != math.isnan(over)  # exactly one safety part applies to a known truth
    assert c["safety_penalty"] == pytest.approx(
        C2.missed_malignant_penalty * (0.0 if math.isnan(miss) else miss) + C2.false_alarm_penalty * (
            0.0 if math.isnan(over) else over))
    assert S2_LO <= c["total"] <= S2_HI
    if c["format"] == 0.0:
        assert c["relevance"] == 0.0 and c["top1"] == 0.0


junk = st.one_of(
    st.text(max_size=200),
    st.builds(lambda a, b: a + b, st.sampled_from(['{"diagnoses":', "[", "1. ", "```json\n{", '{"x":']),
              st.text(max_size=60)),
    st.lists(st.one_of(st.sampled_from(LABELS + OOV), st.text(max_size=8), st.integers()), max_size=8).map(
        lambda xs: json.dumps({"diagnoses": xs})),
)


@FAST
@given(text=junk, truth=st.sampled_from(LABELS))
def test_stage2_never_raises_and_stays_in_bounds(text, truth):
    _check_stage2_bounds(s2(text, truth))


valid_lists = st.lists(st.sampled_from(LABELS + OOV), min_size=1, max_size=6, unique=True)


@FAST
@given(items=valid_lists, truth=st.sampled_from(LABELS), numbered=st.booleans())
def test_stage2_valid_lists_bounds(items, truth, numbered):
    text = "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1)) if numbered else dx(*items)
    c = s2(text, truth)
    assert c["format"] == 1.0
    _check_stage2_bounds(c)
    assert c["oov_rate"] == pytest.approx(sum(x in OOV for x in items) / len(items))


@FAST
@given(data=st.data(), truth=st.sampled_from(LABELS))
def test_moving_truth_up_never_lowers_reward(data, truth):
    others = data.draw(st.lists(st.sampled_from([x for x in LABELS + OOV if x != truth]), max_size=5, unique=True))
    k = data.draw(st.integers(1, len(others) + 1))
    items = others[: k - 1] + [truth] + others[k - 1 :]
    at_k = s2(items, truth)
    if k > 1:
        items[k - 2], items[k - 1] = items[k - 1], items[k - 2]
        up = s2(items, truth)
        assert up["relevance"] >= at_k["relevance"] - 1e-12 and up["total"] >= at_k["total"] - 1e-12
    first = s2([truth] + others, truth)
    assert first["relevance"] == C2.rel_exact and first["top1"] == 1.0 and first["total"] >= at_k["total"]


@FAST
@given(data=st.data(), truth=st.sampled_from(LABELS))
def test_permuting_irrelevant_items(data, truth):
    items = data.draw(st.lists(st.sampled_from(irrelevant_to(truth)), min_size=1, max_size=6, unique=True))
    shuffled = data.draw(st.permutations(items))
    a, b = s2(items, truth), s2(shuffled, truth)
    assert a["relevance"] == b["relevance"] == 0.0
    if SPACE.is_malignant(truth):  # rank-1 false alarms only exist for non-malignant truths
        assert a["total"] == b["total"]


@FAST
@given(data=st.data(), truth=st.sampled_from(LABELS), kind=st.sampled_from(["dcg", "reciprocal", "none"]))
def test_swapping_relevant_and_irrelevant_follows_discount(data, truth, kind):
    cfg = Stage2RewardConfig(discount=kind)
    filler = data.draw(st.lists(st.sampled_from(irrelevant_to(truth)), min_size=1, max_size=5, unique=True))
    i, j = data.draw(st.integers(0, len(filler))), data.draw(st.integers(0, len(filler)))
    items = filler.copy()
    items.insert(i, truth)
    swapped = items.copy()
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert s2(items, truth, cfg)["relevance"] == pytest.approx(discount(i + 1, kind))
    assert s2(swapped, truth, cfg)["relevance"] == pytest.approx(discount(j + 1, kind))


def test_discount_is_dcg_normalised():
    assert discount(1) == 1.0 and discount(3) == pytest.approx(0.5)
    assert [discount(r) for r in range(1, 7)] == sorted((discount(r) for r in range(1, 7)), reverse=True)


def test_equivalent_label_counts_as_exact():
    for name in ("malignant melanoma", "Malignant Melanoma", "MM"):
        c = s2([name], "melanoma")
        assert c["relevance"] == 1.0 and c["top1"] == 1.0


def test_partial_credit_ordering():
    exact, nine, three, unrelated = (s2([x], "melanoma")["relevance"] for x in
                                     ("melanoma", "lentigo maligna", "basal cell carcinoma", "psoriasis"))
    assert exact > nine > three > unrelated == 0.0
    assert (exact, nine, three) == (C2.rel_exact, C2.rel_nine, C2.rel_three)


@FAST
@given(data=st.data(), truth=st.sampled_from(MALIGNANT), kind=st.sampled_from(["dcg", "reciprocal"]))
def test_safety_penalty(data, truth, kind):
    cfg = Stage2RewardConfig(discount=kind)
    benign = data.draw(st.lists(st.sampled_from(NON_MALIGNANT), min_size=1, max_size=5, unique=True))
    assert s2(benign, truth)["safety_penalty"] == C2.missed_malignant_penalty
    extra = data.draw(st.sampled_from(MALIGNANT))
    # The penalty depends on where the first malignant candidate sits (it used to vanish at any rank).
    penalties = []
    for rank in range(1, len(benign) + 2):
        with_malignant = benign.copy()
        with_malignant.insert(rank - 1, extra)
        c = s2(with_malignant, truth, cfg)
        assert c["malignant_miss"] == pytest.approx(1.0 - discount(rank, kind))
        assert c["safety_penalty"] == pytest.approx(cfg.missed_malignant_penalty * (1.0 - discount(rank, kind)))
        penalties.append(c["safety_penalty"])
    assert penalties[0] == 0.0 and penalties == sorted(penalties) and penalties[-1] < cfg.missed_malignant_penalty
    # A non-malignant truth called malignant at rank 1 costs less than missing a malignancy.
    benign_truth = data.draw(st.sampled_from(NON_MALIGNANT))
    alarm = s2([extra, *[b for b in benign if b != benign_truth]], benign_truth)["safety_penalty"]
    assert 0.0 < alarm == C2.false_alarm_penalty < C2.missed_malignant_penalty
    assert s2(benign[:1] + [extra], benign_truth)["safety_penalty"] == 0.0  # malignant below rank 1 is fine


ALIASES = ("MM", "nevus", "mole", "BCC", "SK", "Malignant Melanoma")


@FAST
@given(items=st.lists(st.sampled_from(LABELS + OOV + ALIASES), max_size=7), truth=st.sampled_from(LABELS))
def test_safety_parts_agree_with_evaluation_metrics(items, truth):
    """Reward and evaluation share one rank of the first malignant candidate (metrics.first_malignant_rank)."""
    text = dx(*items)
    raw = pd.DataFrame({"image_id": ["a"], "label": [truth], "fitzpatrick_scale": [3], "raw_output": [text]})
    ind = image_indicators(map_predictions(raw, SPACE)[0], SPACE).iloc[0]
    c = s2(text, truth)
    assert c["top1"] == float(ind["top1_grounded"])
    if ind["truth_malignant"]:
        assert (c["malignant_miss"] == 0.0) == (not ind["miss_at1"])
        assert (c["malignant_miss"] == 1.0) == bool(ind["miss_at6"])
        if ind["dangerous_error"]:
            assert c["malignant_miss"] >= 1.0 - discount(2) - 1e-12
    else:
        assert c["over_call"] == float(ind["over_call"])


def test_invalid_lists_score_no_format_and_no_relevance():
    for text in (dx("melanoma", "Melanoma"), dx(*LABELS[:7]), dx(), "", '{"diagnoses": ["melanoma"'):
        c = s2(text, "melanoma")
        assert (c["format"], c["relevance"], c["top1"], c["malignant_miss"]) == (0.0, 0.0, 0.0, 1.0)
        assert c["safety_penalty"] == C2.missed_malignant_penalty
    assert s2(dx(*LABELS[:6]), "melanoma")["format"] == 1.0


def test_unknown_truth_is_not_applicable_and_oov_penalty():
    c = s2(["melanoma", "blorp"], "not a label at all")
    assert math.isnan(c["relevance"]) and math.isnan(c["safety_penalty"]) and c["total"] == pytest.approx(0.2)
    assert math.isnan(c["malignant_miss"]) and math.isnan(c["over_call"])
    cfg = Stage2RewardConfig(oov_penalty=0.4)
    assert s2(["melanoma", "blorp"], "melanoma", cfg)["total"] == pytest.approx(0.2 + 1.0 - 0.4 * 0.5)


def test_stage2_config_validation():
    with pytest.raises(ValueError):
        Stage2RewardConfig(rel_nine=0.1, rel_three=0.3)
    with pytest.raises(ValueError):
        Stage2RewardConfig(unknown_key=1)


# ---- Stage I ------------------------------------------------------------------------------------

ROW = {
    "image_quality": "good", "body_site": "face", "primary_morphology": ["plaque", "papule"],
    "secondary_features": ["white_striae"], "colour": ["erythematous"], "border_definition": "well_defined",
    "border_regularity": "irregular", "configuration": ["annular"], "lesion_count": "few",
    "distribution": "localised", "size_class": "10_to_30mm", "fitzpatrick_type": "IV",
}
REF = render_caption(Caption.from_attributes(ROW))
S1_LABELS = ("striae", "psoriasis", "lichen planus")  # "striae" is a real Fitzpatrick17k label


def edit(**changes) -> str:
    obj = json.loads(REF)
    obj.update(changes)
    return json.dumps(obj)


def s1(text, ref=REF, cfg=C1, labels=S1_LABELS):
    return stage1_components(text, ref, labels, cfg)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (REF, 1.2),                                              # perfect: format + all fields
        (edit(body_site="trunk"), 0.2 + 11 / 12),                # one scalar field wrong
        (edit(colour=["erythematous", "pink"]), 0.2 + (11 + 2 / 3) / 12),  # colour F1 = 2/3
        (edit(summary="Annular plaques as in lichen planus."), 1.2 - 0.5),  # names a diagnosis
        (REF + " " * (1000 - len(REF)), 1.2 - 0.1 * 200 / 100),  # 200 chars over the 800 budget
        ("no JSON here", 0.0),
        ("this looks like psoriasis", -0.5),                     # junk naming a diagnosis
    ],
)
def test_stage1_hand_computed(completion, expected):
    assert s1(completion)["total"] == pytest.approx(expected)


def test_perfect_caption_is_max_and_white_striae_is_not_a_diagnosis():
    c = s1(REF)
    assert c == {"format": 1.0, "fields": 1.0, "diagnosis_penalty": 0.0, "length_penalty": 0.0, "total": S1_HI}
    assert "white striae" in json.loads(REF)["summary"]


captions = st.fixed_dictionaries({
    **{f: st.sampled_from(v) for f, v in SCALAR_FIELDS.items()},
    **{f: st.lists(st.sampled_from([t for t in v if t != "none"]), min_size=1, max_size=3, unique=True)
       for f, v in SET_FIELDS.items()},
}).map(lambda row: Caption.from_attributes(row))


@FAST
@given(pred=captions, ref=captions, field=st.sampled_from(sorted(SCALAR_FIELDS)),
       weights=st.dictionaries(st.sampled_from(sorted({**SCALAR_FIELDS, **SET_FIELDS})),
                               st.floats(0.1, 5.0), max_size=4))
def test_one_wrong_field_costs_its_weight_share(pred, ref, field, weights):
    cfg = Stage1RewardConfig(field_weights=weights)
    ref_text = render_caption(ref)
    wrong = next(v for v in SCALAR_FIELDS[field] if v != getattr(ref, field))
    right_c = s1(render_caption(ref), ref_text, cfg)
    wrong_c = s1(render_caption(ref.model_copy(update={field: wrong})), ref_text, cfg)
    share = cfg.field_weights[field] / sum(cfg.field_weights.values())
    assert right_c["total"] == pytest.approx(S1_HI)
    assert right_c["total"] - wrong_c["total"] == pytest.approx(cfg.fields_weight * share)
    c = s1(render_caption(pred), ref_text, cfg)
    assert c["format"] == 1.0 and 0.0 <= c["fields"] <= 1.0 and c["diagnosis_penalty"] == 0.0


@FAST
@given(text=st.one_of(st.text(max_size=300), st.builds(lambda cut: REF[:cut], st.integers(0, len(REF))),
                      st.builds(lambda s: edit(summary=s), st.text(max_size=80))))
def test_stage1_never_raises_and_stays_in_bounds(text):
    c = s1(text)
    assert c["format"] in (0.0, 1.0) and 0.0 <= c["fields"] <= 1.0
    assert c["diagnosis_penalty"] in (0.0, C1.diagnosis_penalty)
    assert 0.0 <= c["length_penalty"] <= C1.length_penalty_cap and S1_LO <= c["total"] <= S1_HI


def test_padding_penalty_grows_then_caps():
    room = C1.length_budget_chars - len(REF)
    pens = [s1(REF + " " * n)["length_penalty"] for n in (0, room, room + 150, room + 5000, room + 9000)]
    assert pens[0] == pens[1] == 0.0 and pens[1] < pens[2] < pens[3] == pens[4] == C1.length_penalty_cap


def test_missing_reference_and_config_errors():
    c = s1(REF, ref="")
    assert math.isnan(c["fields"]) and c["total"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="unknown caption fields"):
        Stage1RewardConfig(field_weights={"colour_typo": 1.0})
    with pytest.raises(ValueError):
        Stage1RewardConfig(field_weights=dict.fromkeys(SCALAR_FIELDS.keys() | SET_FIELDS.keys(), 0.0))


def test_real_taxonomy_labels_do_not_flag_vocabulary():
    from shared_data import shared_file

    labels = tuple(pd.read_csv(shared_file("fitzpatrick17k/taxonomy.csv"))["label"])
    every_term = {f: list(v) if f in SET_FIELDS else v[0] for f, v in {**SCALAR_FIELDS, **SET_FIELDS}.items()}
    every_term["secondary_features"] = [t for t in SET_FIELDS["secondary_features"] if t != "none"]
    text = render_caption(Caption.from_attributes(every_term))
    assert s1(text, text, labels=labels)["diagnosis_penalty"] == 0.0


# ---- TRL adapters -------------------------------------------------------------------------------


def shapes(text: str):
    return [text, [{"role": "assistant", "content": text}],
            [{"role": "assistant", "content": [{"type": "text", "text": text}]}]]


def call_all(funcs, completions, **columns):
    logged = []
    out = [f(prompts=["p"] * len(completions), completions=completions, completion_ids=[[1]] * len(completions),
             trainer_state=None, log_extra=lambda *a: None, log_metric=lambda n, v: logged.append((n, v)), **columns)
           for f in funcs]
    return out, logged


def test_stage2_adapters_sum_to_total_for_all_shapes():
    funcs = make_stage2_reward_funcs(C2, SPACE)
    assert [f.__name__ for f in funcs] == ["stage2_format", "stage2_relevance", "stage2_safety", "stage2_oov"]
    texts = [dx("psoriasis", "melanoma"), "1. eczema", "junk", dx("melanoma", "melanoma")]
    truths = ["melanoma", "eczema", "psoriasis", "nope"]
    for k in range(3):
        completions = [shapes(t)[k] for t in texts]
        out, logged = call_all(funcs, completions, label=truths, reference_caption=[""] * 4)
        for i, (t, truth) in enumerate(zip(texts, truths)):
            assert sum(col[i] or 0.0 for col in out) == pytest.approx(s2(t, truth)["total"])
        assert out[1][3] is None  # relevance is not applicable for a label outside the taxonomy
        assert {n for n, _ in logged} == {f"rewards/stage2_{k}/mean" for k in
                                          ("top1", "malignant_miss", "over_call", "oov_rate")}


def test_stage1_adapters_sum_to_total_and_parse_once():
    funcs = make_stage1_reward_funcs(C1, S1_LABELS)
    assert [f.__name__ for f in funcs] == ["stage1_format", "stage1_fields", "stage1_diagnosis", "stage1_length"]
    texts = [REF, edit(summary="Plaques of psoriasis."), "junk", REF[:100], edit(size_class="gt_30mm") + " ."]
    clear_caches()
    for k in range(3):
        out, logged = call_all(funcs, [shapes(t)[k] for t in texts], reference_caption=[REF] * 5, label=["x"] * 5)
        for i, t in enumerate(texts):
            assert sum(col[i] for col in out) == pytest.approx(s1(t)["total"])
        assert logged and logged[0][0] == "rewards/stage1_fields/mean"
    # 4 functions x 3 shapes, yet each distinct string (completions and the reference) parsed once.
    assert parse_caption_lenient.cache_info().misses == len(set(texts) | {REF})
    with pytest.raises(ValueError, match="reference_caption"):
        funcs[0](prompts=["p"], completions=["x"], label=["y"])


@pytest.mark.parametrize("completion", [None, 123, [], [{}], [{"role": "assistant", "content": None}],
                                        {"content": [{"type": "image"}, {"type": "text", "text": 5}]}, [[["x"]]]])
def test_odd_completion_objects_never_raise(completion):
    assert stage2_components(completion, "melanoma", SPACE, C2)["total"] == pytest.approx(-M)  # no list
    assert stage1_components(completion, REF, S1_LABELS, C1)["total"] == 0.0
