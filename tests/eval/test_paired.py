"""Ablation over seeds: row summaries, paired bootstrap differences, determinism and the stage."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

import pipelines.ablation as ablation
from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.metrics import bootstrap_ratios, compute_metrics, confusion_matrix, percentile_ci
from skinflow.eval.paired import (
    NO_EFFECT, AblationConfig, ablation_results, compact, evaluation, group_rows,
    markdown, paired_difference, parse_ranked,
)
from skinflow.eval.predictions import map_predictions
from skinflow.io import write_json

from eval_fixtures import taxonomy

TAXONOMY = taxonomy("melanoma", "basal cell carcinoma", "squamous cell carcinoma", "nevocytic nevus",
                    "seborrheic keratosis", "psoriasis", "eczema", "acne")
LABELS = sorted(TAXONOMY["label"])
K = 6  # eight classes: top-6
N_IMAGES = 300


@pytest.fixture(scope="module")
def space() -> LabelSpace:
    return LabelSpace(TAXONOMY)


def image_ids(n: int = N_IMAGES) -> list[str]:
    return [f"img{i:04d}" for i in range(n)]


TRUTHS = list(np.random.default_rng(0).choice(LABELS, size=N_IMAGES))


def mapped(p_correct: float, seed: int, ids: list[str] | None = None, p_unparsed: float = 0.05) -> pd.DataFrame:
    """Mapped predictions: rank 1 is the truth with probability ``p_correct``, else a wrong label."""
    ids = ids or image_ids()
    rng = np.random.default_rng(seed)
    ranked, ok = [], []
    for truth in TRUTHS[:len(ids)]:
        wrong = [label for label in LABELS if label != truth]
        first = truth if rng.random() < p_correct else wrong[rng.integers(len(wrong))]
        rest = [label for label in rng.permutation(LABELS).tolist() if label != first][:2]
        parsed = rng.random() >= p_unparsed
        ranked.append([first, *rest] if parsed else [])
        ok.append(parsed)
    return pd.DataFrame({"image_id": ids, "label": TRUTHS[:len(ids)], "fitzpatrick_scale": 3,
                         "parse_ok": ok, "ranked_labels": ranked, "n_items": [len(r) for r in ranked], "n_oov": 0})


def rows_for(space, spec: dict[str, tuple[float, list[int]]]):
    evs = [evaluation(f"{v}-s{s}", v, s, mapped(p, seed=1000 * i + s), space, K)
           for i, (v, (p, seeds)) in enumerate(sorted(spec.items())) for s in seeds]
    return group_rows(evs)


def config(*comparisons, n_boot: int = 500, seed: int = 0) -> AblationConfig:
    return AblationConfig(n_boot=n_boot, seed=seed, comparisons=[list(c) for c in comparisons])


# ---- statistics ---------------------------------------------------------------------------------


def test_true_margin_is_an_effect_and_an_identical_row_is_not(space):
    rows = rows_for(space, {"good": (0.75, [0, 1, 2]), "base": (0.45, [0, 1, 2]), "twin": (0.45, [0, 1, 2])})
    results = ablation_results(rows, config(("good", "base"), ("twin", "base")))
    better, same = (c["metrics"] for c in results["comparisons"])

    top1 = better["top1_exact"]
    assert top1["effect"] and top1["ci_low"] > 0 and top1["ci_low"] <= top1["diff"] <= top1["ci_high"]
    assert top1["diff"] == pytest.approx(0.30 * 0.95, abs=0.06)     # 30 pp on the parseable outputs
    assert top1["verdict"] == f"effect ({100 * top1['diff']:+.1f} pp)"
    # Three seeds each, paired by seed number: the spread of the per-seed differences.
    assert top1["seed_paired"]["seeds"] == [0, 1, 2] and top1["seed_paired"]["sd"] is not None

    for name in ("top1_exact", f"top{K}_exact", "format_compliance"):
        assert not same[name]["effect"] and same[name]["verdict"] == NO_EFFECT
        assert same[name]["ci_low"] < 0 < same[name]["ci_high"]

    summary = results["rows"]["good"]["metrics"]["top1_exact"]
    assert summary["n_seeds"] == 3 and len(summary["per_seed"]) == 3
    assert summary["min"] <= summary["mean"] <= summary["max"]
    assert summary["mean"] == pytest.approx(summary["pooled"])      # same denominators in every seed
    assert summary["ci_low"] < summary["pooled"] < summary["ci_high"]


def test_same_inputs_and_seed_give_identical_bytes(space, tmp_path):
    cfg = config(("good", "base"), ("base", "good"))
    for i in range(2):
        rows = rows_for(space, {"good": (0.7, [0, 1]), "base": (0.5, [0, 1, 2])})
        results = ablation_results(rows, cfg)
        write_json(tmp_path / f"full{i}.json", results)
        write_json(tmp_path / f"compact{i}.json", compact(results))
        (tmp_path / f"md{i}.md").write_text(markdown(results))
    for stem in ("full", "compact"):
        assert (tmp_path / f"{stem}0.json").read_bytes() == (tmp_path / f"{stem}1.json").read_bytes()
    assert (tmp_path / "md0.md").read_bytes() == (tmp_path / "md1.md").read_bytes()
    # Streams are keyed by name: dropping a comparison leaves the others' CIs as they were.
    alone = ablation_results(rows, config(("good", "base")))
    assert alone["comparisons"][0] == results["comparisons"][0]
    other = ablation_results(rows, config(("good", "base"), ("base", "good"), seed=1))
    assert other["comparisons"][0]["metrics"]["top1_exact"]["ci_low"] != \
        results["comparisons"][0]["metrics"]["top1_exact"]["ci_low"]


def test_ratio_metric_pools_seeds_per_image_and_resamples_both_rows_together(space):
    ids = ["a", "b", "c", "d", "e", "f"]
    truths = ["melanoma", "basal cell carcinoma", "squamous cell carcinoma", "acne", "eczema", "psoriasis"]

    def frame(top1: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"image_id": ids, "label": truths, "fitzpatrick_scale": 2, "parse_ok": True,
                             "ranked_labels": [[t] for t in top1], "n_items": 1, "n_oov": 0})

    # Miss@1 over the three malignant truths: A misses 1/3; B misses 2/3 (seed 0) and 3/3 (seed 1).
    a = frame(["melanoma", "basal cell carcinoma", "acne", "acne", "eczema", "psoriasis"])
    b0 = frame(["acne", "basal cell carcinoma", "acne", "acne", "eczema", "melanoma"])
    b1 = frame(["acne", "eczema", "acne", "acne", "eczema", "psoriasis"])
    rows = group_rows([evaluation("A", "A", 0, a, space, K), evaluation("B-s0", "B", 0, b0, space, K),
                       evaluation("B-s1", "B", 1, b1, space, K)])
    diff = paired_difference(rows["A"], rows["B"], n_boot=2000, seed=0, ci=0.95)
    miss = diff["malignant_miss_at1"]
    close = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731 (reports round to 6 digits)
    assert miss["a"] == close(1 / 3) and miss["b"] == close(2.5 / 3)       # B: per-image mean of its seeds
    assert miss["diff"] == close(-0.5)
    assert diff["over_call_rate"]["b"] == close(0.5 / 3)                   # over the 3 benign truths
    assert miss["seed_paired"] is None                                     # A has one seed only

    # The counts-matrix bootstrap equals the naive one: the same drawn images score A and B, each
    # as sum(num)/sum(den) on that draw, and draws without a malignant image are dropped.
    num = np.column_stack([rows["A"].num.mean(0)[:, 4], rows["B"].num.mean(0)[:, 4]])  # per-image seed means
    den = np.column_stack([rows["A"].den.mean(0)[:, 4], rows["B"].den.mean(0)[:, 4]])
    reps = bootstrap_ratios(num, den, 2000, np.random.default_rng(7))
    draws = np.random.default_rng(7).integers(0, 6, size=(2000, 6))
    with np.errstate(invalid="ignore", divide="ignore"):
        naive = num[draws].sum(1) / den[draws].sum(1)
    assert np.allclose(reps, naive, equal_nan=True) and np.isnan(reps[:, 0]).any()
    low, high = percentile_ci(reps[:, :1] - reps[:, 1:], 0.95)
    kept = (naive[:, 0] - naive[:, 1])[~np.isnan(naive[:, 0])]
    assert low[0] == pytest.approx(np.percentile(kept, 2.5)) and high[0] == pytest.approx(np.percentile(kept, 97.5))
    assert -1 <= miss["ci_low"] <= miss["diff"] <= miss["ci_high"] <= 1


def test_comparisons_with_missing_rows_are_not_run(space):
    rows = rows_for(space, {"stage2": (0.5, [0]), "warmup": (0.4, [0])})
    results = ablation_results(rows, AblationConfig(n_boot=100))        # the paper's default comparisons
    status = {c["name"]: c["status"] for c in results["comparisons"]}
    assert status["stage2_vs_warmup"] == "ok" and status["stage2_only_vs_warmup"] == "not run"
    missing = next(c for c in results["comparisons"] if c["name"] == "cfa_vs_stage2")
    assert missing["missing"] == ["cfa"]
    assert compact(results)["paired"]["cfa_vs_stage2"] == {"status": "not run"}
    text = markdown(results)
    assert "CFA baseline vs SkinFlow (cfa − stage2): not run (missing cfa)" in text
    assert results["row_order"] == ["warmup", "stage2"]


def test_different_image_sets_fail_naming_the_rows(space):
    evs = [evaluation("warmup-s0", "warmup", 0, mapped(0.5, 1), space, K),
           evaluation("stage2-s0", "stage2", 0, mapped(0.5, 2), space, K),
           evaluation("cfa", "cfa", 0, mapped(0.5, 3, ids=image_ids(N_IMAGES - 2)), space, K)]
    with pytest.raises(ValueError, match=r"stage2-s0, warmup-s0: 300 images; cfa: 298 images, 2 missing"):
        group_rows(evs)
    rows = group_rows(evs, common_images=True)                          # the opt-in escape hatch
    assert {r.n_images for r in rows.values()} == {N_IMAGES - 2}
    with pytest.raises(ValueError, match="seed 0 comes from both"):
        group_rows([*evs[:2], evaluation("warmup", "warmup", 0, mapped(0.5, 4), space, K)])


def test_config_rejects_self_and_duplicate_comparisons():
    with pytest.raises(ValueError, match="with itself"):
        AblationConfig(comparisons=[["a", "a"]])
    with pytest.raises(ValueError, match="listed twice"):
        AblationConfig(comparisons=[["a", "b"], ["a", "b", "again"]])
    assert AblationConfig().comparisons[0] == ["stage2_only", "warmup", "+Stage II"]


@pytest.mark.parametrize("stored, expected", [
    ('["melanoma", null]', ["melanoma", None]),                         # JSON (evaluate today)
    (str(["melanoma", None, "Becker's nevus"]), ["melanoma", None, "Becker's nevus"]),  # str(list)
    (str(np.array(["basal cell carcinoma", None], dtype=object)), ["basal cell carcinoma", None]),
    (str(np.array(["a b", "c"])), ["a b", "c"]),                         # numpy str(): no commas
    ("[]", []), (None, []), (float("nan"), []), (np.array(["x", None], dtype=object), ["x", None]),
])
def test_parse_ranked_reads_every_stored_form(stored, expected):
    assert parse_ranked(stored) == expected


# ---- the stage ----------------------------------------------------------------------------------


def _write_row(root, stem: str, frame: pd.DataFrame, space, payload: dict, as_json: bool = True) -> None:
    metrics = compute_metrics(frame, space, n_boot=0)
    (root / "metrics/eval").mkdir(parents=True, exist_ok=True)
    (root / f"metrics/eval/{stem}.json").write_text(json.dumps({**metrics, **payload}))
    store = (lambda v: json.dumps(list(v))) if as_json else str              # new and old storage
    (root / f"data/eval/{stem}").mkdir(parents=True, exist_ok=True)
    frame.assign(ranked_labels=[store(v) for v in frame["ranked_labels"]]).to_parquet(
        root / f"data/eval/{stem}/predictions.parquet", index=False)


def _layout(root, space) -> None:
    (root / "data/interim").mkdir(parents=True)
    TAXONOMY.to_csv(root / "data/interim/taxonomy.csv", index=False)
    for i, (variant, p) in enumerate((("warmup", 0.3), ("stage2", 0.8))):
        for seed in (0, 1):
            _write_row(root, f"{variant}-s{seed}", mapped(p, 10 * i + seed), space,
                       {"variant": f"{variant}-s{seed}", "seed": seed, "model": f"models/{variant}"})
    _write_row(root, "cfa", mapped(0.5, 99), space, {"variant": "cfa", "model": "models/cfa"}, as_json=False)
    (root / "params.yaml").write_text(yaml.safe_dump({"ablation": {
        "n_boot": 200, "seed": 3, "comparisons": [["stage2", "warmup", "SkinFlow vs warm-up"],
                                                  ["cfa", "stage2"], ["s1_s2", "warmup"]]}}))


def test_stage_writes_report_and_compact_metrics(tmp_path, monkeypatch, space):
    _layout(tmp_path, space)
    monkeypatch.chdir(tmp_path)
    results = ablation.main(["--params", "params.yaml"])
    assert results["row_order"] == ["warmup", "stage2", "cfa"]
    assert results["rows"]["stage2"]["seeds"] == [0, 1] and results["rows"]["cfa"]["seeds"] == [0]

    text = (tmp_path / "reports/ablation.md").read_text()
    assert f"| stage2 | 0,1 | {N_IMAGES} |" in text and f"| cfa | 0 | {N_IMAGES} |" in text
    assert "| SkinFlow vs warm-up: stage2 − warmup | top1_exact | +" in text and "effect (+" in text
    assert "(s1_s2 − warmup): not run (missing s1_s2)" in text and "## How to read this" in text

    compact_json = json.loads((tmp_path / "reports/ablation.json").read_text())
    assert set(compact_json["rows"]) == {"warmup", "stage2", "cfa"}
    assert set(compact_json["rows"]["stage2"]) == {"n_seeds", "n_images", "top1_exact", "top6_exact",
                                                   "malignant_miss_at1", "dangerous_error_rate", "format_compliance",
                                                   "caption_macro"}
    assert compact_json["paired"]["stage2_vs_warmup"]["top1_exact"]["effect"] is True
    assert compact_json["paired"]["s1_s2_vs_warmup"] == {"status": "not run"}
    full = json.loads((tmp_path / "reports/ablation_full.json").read_text())
    assert full["rows"]["stage2"]["metrics"]["over_call_rate"]["n_seeds"] == 2


def test_caption_scores_become_a_paired_metric_on_the_images_both_rows_captioned(space):
    frame = mapped(0.5, 1)
    ids = sorted(frame["image_id"].astype(str))
    low = pd.DataFrame({"image_id": ids[:20], "macro": 0.2})
    high = pd.DataFrame({"image_id": ids[:20], "macro": [0.5 + 0.01 * i for i in range(20)]})
    a = evaluation("a-s0", "a", 0, frame, space, 6, high)
    b = evaluation("b-s0", "b", 0, frame, space, 6, low)
    none = evaluation("c", "c", 0, frame, space, 6)
    assert a.values()["caption_macro"] == pytest.approx(0.595) and math.isnan(none.values()["caption_macro"])
    rows = group_rows([a, b])
    diff = paired_difference(rows["a"], rows["b"], n_boot=200, seed=0, ci=0.95)["caption_macro"]
    assert diff["diff"] == pytest.approx(0.395) and diff["effect"] and diff["ci_low"] > 0
    with pytest.raises(ValueError, match="caption scores for images it did not evaluate"):
        evaluation("d", "d", 0, frame, space, 6, pd.DataFrame({"image_id": ["nope"], "macro": [1.0]}))


def test_stage_writes_a_headline_sized_for_dvc_exp_show(tmp_path, monkeypatch, space):
    _layout(tmp_path, space)
    (tmp_path / "metrics/rl").mkdir(parents=True)
    for seed, gain in ((0, 0.02), (1, 0.04)):
        (tmp_path / f"metrics/rl/stage2-s{seed}.json").write_text(json.dumps({"control": {"gain_last_third": gain}}))
    monkeypatch.chdir(tmp_path)
    results = ablation.main(["--params", "params.yaml"])
    head = json.loads((tmp_path / "metrics/headline.json").read_text())
    assert set(head) == {"rows", "stage2_vs_warmup", "rl_gain"}
    assert head["rows"]["stage2"] == {
        "top1": round(100 * results["rows"]["stage2"]["metrics"]["top1_exact"]["mean"], 1),
        "top6": round(100 * results["rows"]["stage2"]["metrics"]["top6_exact"]["mean"], 1),
        "miss1": round(100 * results["rows"]["stage2"]["metrics"]["malignant_miss_at1"]["mean"], 1)}
    diff = next(c for c in results["comparisons"] if c["name"] == "stage2_vs_warmup")["metrics"]["top1_exact"]
    assert (head["stage2_vs_warmup"]["top1_lo"], head["stage2_vs_warmup"]["top1_hi"]) == (
        round(100 * diff["ci_low"], 1), round(100 * diff["ci_high"], 1))
    assert head["rl_gain"] == {"stage2": 0.03}                 # mean over seeds; rows without RL have none
    # Plot data for dvc.yaml's top-level plots.
    table = pd.read_csv(tmp_path / "reports/plots/ablation.csv")
    assert list(table.columns) == ["variant", *(f"{m}{s}" for m in ("top1", "topk", "miss1") for s in ("", "_lo", "_hi"))]
    assert table["variant"].tolist() == ["warmup", "stage2", "cfa"]
    assert table.loc[1, "top1"] == round(100 * results["rows"]["stage2"]["metrics"]["top1_exact"]["mean"], 2)
    confusion = pd.read_csv(tmp_path / "reports/plots/confusion-stage2.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == N_IMAGES
    assert (tmp_path / "reports/plots/confusion-warmup.csv").exists()
    topk = pd.read_csv(tmp_path / "reports/plots/topk.csv")
    assert list(topk.columns) == ["k", "warmup", "stage2", "cfa"] and topk["k"].tolist() == list(range(1, 7))
    stage2 = results["rows"]["stage2"]["metrics"]
    assert topk["stage2"].iloc[0] == round(100 * stage2["top1_exact"]["pooled"], 2)     # k = 1 is Top-1
    assert topk["stage2"].iloc[-1] == round(100 * stage2["top6_exact"]["pooled"], 2)    # k = K is Top-K
    assert topk["stage2"].is_monotonic_increasing
    leaves = [*(v for row in head["rows"].values() for v in row.values()), *head["stage2_vs_warmup"].values(),
              *head["rl_gain"].values()]
    assert len(leaves) == 3 * 3 + 9 + 1 and all(isinstance(v, (int, float)) for v in leaves)


def test_report_renders_the_seeded_ablation(tmp_path, monkeypatch, space):
    from skinflow.report.inputs import Artifact, ReportConfig, ReportInputs
    from skinflow.report.render import Table, ablation_section

    _layout(tmp_path, space)
    monkeypatch.chdir(tmp_path)
    ablation.main([])
    data = json.loads((tmp_path / "reports/ablation.json").read_text())
    inputs = ReportInputs(ReportConfig(), {}, {"ablation": Artifact("ablation", "reports/ablation.json", data, None)})
    rows, paired = [p for p in ablation_section(inputs).parts if isinstance(p, Table)]
    assert [r[:3] for r in rows.rows] == [["warmup", "2", str(N_IMAGES)], ["stage2", "2", str(N_IMAGES)],
                                          ["cfa", "1", str(N_IMAGES)]]
    assert sorted(rows.header[3:]) == ["caption_macro", "dangerous_error_rate", "format_compliance",
                                       "malignant_miss_at1", "top1_exact", "top6_exact"]
    by_name = {r[0]: r for r in paired.rows}
    top1 = paired.header.index("top1_exact")
    assert by_name["stage2_vs_warmup"][top1].endswith(" *") and by_name["s1_s2_vs_warmup"][top1] == "not run"


def test_stage_refuses_predictions_that_disagree_with_the_stored_metrics(tmp_path, monkeypatch, space):
    _layout(tmp_path, space)
    path = tmp_path / "metrics/eval/cfa.json"
    data = json.loads(path.read_text())
    data["overall"]["top1_exact"]["value"] += 0.01
    path.write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="cfa.json: top1_exact is"):
        ablation.main(["--params", "params.yaml"])


@pytest.mark.parametrize("stem, data, expected", [
    ("stage2-s1", {"variant": "stage2-s1", "seed": 1}, ("stage2", 1)),
    ("cfa", {"variant": "cfa"}, ("cfa", 0)),
    ("x-s2", {}, ("x", 2)),                                     # no seed key: the suffix's
    ("odd-s3", {"variant": "odd-s3", "seed": 1}, ("odd-s3", 1)),  # suffix disagrees: kept as the name
])
def test_row_key(stem, data, expected):
    assert ablation.row_key(stem, data) == expected


def test_evaluate_stores_seed_and_ranked_lists_as_json(tmp_path, monkeypatch, space):
    import pipelines.evaluate as evaluate

    raw = pd.DataFrame({"image_id": ["i1", "i2"], "label": ["acne", "melanoma"], "fitzpatrick_scale": [2, -1],
                        "raw_output": [json.dumps({"diagnoses": ["acne", "blue widget"]}), "not a list"]})
    frame, log = map_predictions(raw, space)
    result = {"mapped": frame, "match_log": log, "metrics": compute_metrics(frame, space, n_boot=0),
              "confusion": confusion_matrix(frame, space), "caption_scores": None}
    monkeypatch.setattr(evaluate, "evaluate_model", lambda *a, **k: result)
    monkeypatch.setattr(evaluate.pd, "read_parquet", lambda path: pd.DataFrame())
    monkeypatch.setattr(evaluate.pd, "read_csv", lambda path: TAXONOMY)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {}}))
    metrics = evaluate.main(["--variant", "v-s2", "--model", "m", "--seed", "2"])
    assert metrics["seed"] == 2 and json.loads((tmp_path / "metrics/eval/v-s2.json").read_text())["seed"] == 2
    monkeypatch.undo()
    stored = pd.read_parquet(tmp_path / "data/eval/v-s2/predictions.parquet")
    assert stored["ranked_labels"].tolist() == ['["acne", null]', "[]"]
    assert [parse_ranked(v) for v in stored["ranked_labels"]] == [["acne", None], []]
    assert json.loads(stored["ranked_raw"][0]) == ["acne", "blue widget"]


def test_rows_that_could_not_apply_are_listed_with_their_reason(space):
    rows = rows_for(space, {"stage2_only": (0.5, [0]), "warmup": (0.4, [0])})
    why = {"stage2": "starts from models/stage1-s0, which is not applicable (no captions)"}
    results = ablation_results(rows, AblationConfig(n_boot=100), not_produced=why)
    status = {c["name"]: c["status"] for c in results["comparisons"]}
    assert status["stage2_vs_warmup"] == "not applicable" and status["stage2_only_vs_warmup"] == "ok"
    assert status["cfa_vs_stage2"] == "not run"  # cfa is simply absent, not explained
    assert compact(results)["not_produced"] == why
    assert "## Rows not produced" in markdown(results) and why["stage2"] in markdown(results)
