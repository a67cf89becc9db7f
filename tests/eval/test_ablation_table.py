"""The ablation stage's table: paper order first, top-k columns named by each evaluation's k."""

from __future__ import annotations

import json

import pipelines.ablation as ablation


def _metrics(k: int, top1: float, topk: float) -> dict:
    cell = lambda v: {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": 100}  # noqa: E731
    return {"n_images": 100, "model": "models/x", "k": k,
            "overall": {"top1_exact": cell(top1), f"top{k}_exact": cell(topk), "format_compliance": cell(1.0)}}


def test_rows_follow_the_ablation_order_and_read_topk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics/eval").mkdir(parents=True)
    for name, top1 in (("stage2", 0.3), ("warmup", 0.1), ("cfa", 0.2), ("s1_s2", 0.25)):
        (tmp_path / f"metrics/eval/{name}.json").write_text(json.dumps(_metrics(6, top1, 0.7)))
    table = ablation.main()
    assert list(table) == ["warmup", "s1_s2", "stage2", "cfa"]
    assert table["stage2"]["top6_exact"]["value"] == 0.7
    text = (tmp_path / "reports/ablation.md").read_text()
    assert "| top1_exact | top6_exact |" in text and "| stage2 | 100 | 30.0 [25.0, 35.0] | 70.0" in text


def test_small_label_space_keeps_its_topk_column(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics/eval").mkdir(parents=True)
    (tmp_path / "metrics/eval/warmup.json").write_text(json.dumps(_metrics(3, 0.4, 0.9)))
    (tmp_path / "metrics/eval/stage2.json").write_text(json.dumps(_metrics(6, 0.3, 0.7)))
    table = ablation.main()
    assert table["warmup"]["top3_exact"]["value"] == 0.9 and table["stage2"]["top6_exact"]["value"] == 0.7
    text = (tmp_path / "reports/ablation.md").read_text()
    assert "topk_exact" in text and "| warmup | 100 | 40.0 [35.0, 45.0] | 90.0" in text
