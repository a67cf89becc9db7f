from __future__ import annotations

import math

import pytest

from skinflow import vocab
from skinflow.captions.metrics import (
    aggregate,
    caption_text_metrics,
    field_scores,
    local_wordnet,
    meteor,
    set_f1,
    text_metrics,
)
from skinflow.captions.schema import Caption

REF = Caption.model_validate(dict(
    image_quality="good", body_site="arm", primary_morphology=["papule"], secondary_features=["scale", "crust"],
    colour=["pink"], border_definition="well_defined", border_regularity="regular", configuration=["round"],
    lesion_count="single", distribution="localised", size_class="lt_5mm", fitzpatrick_type="II",
    summary="A single pink papule with scale on the arm."))
# Wrong site, one extra morphology (P=1/2, R=1), one of two features (P=1, R=1/2).
PRED = REF.model_copy(update={"body_site": "leg", "primary_morphology": ("papule", "plaque"),
                              "secondary_features": ("scale",)})


class NoSynonyms:
    """WordNet stand-in: METEOR with exact and stem matches only."""

    def synsets(self, *args, **kwargs):
        return []


def test_set_f1():
    assert set_f1(["papule", "plaque"], ["papule"]) == pytest.approx(2 / 3)
    assert set_f1(["a"], ["b"]) == 0.0 and set_f1([], []) == 1.0 and set_f1(["a", "b"], ["b", "a"]) == 1.0


def test_field_scores_hand_computed():
    scores = field_scores(PRED, REF)
    assert set(scores) == {*vocab.SCALAR_FIELDS, *vocab.SET_FIELDS}
    assert scores["body_site"] == 0.0 and scores["image_quality"] == 1.0
    assert scores["primary_morphology"] == pytest.approx(2 / 3)
    assert scores["secondary_features"] == pytest.approx(2 / 3)
    assert scores["colour"] == scores["configuration"] == 1.0
    assert set(field_scores(None, REF).values()) == {0.0}  # an unparsable output scores nothing


def test_aggregate_hand_computed():
    agg = aggregate([REF, PRED, None], [REF, REF, REF])
    assert agg["body_site"] == pytest.approx(1 / 3)  # 1, 0, 0
    assert agg["primary_morphology"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert agg["scalar_accuracy"] == pytest.approx((8 + 7 + 0) / 8 / 3)
    assert agg["set_f1"] == pytest.approx((4 + (2 / 3 + 2 / 3 + 1 + 1) + 0) / 4 / 3)
    assert agg["macro"] == pytest.approx((12 + (7 + 10 / 3) + 0) / 12 / 3)
    assert agg["valid_rate"] == pytest.approx(2 / 3) and agg["n"] == 3
    with pytest.raises(ValueError):
        aggregate([REF], [REF, REF])


def test_text_metrics_hand_computed():
    # Every n-gram matches; only the brevity penalty applies: exp(1 - 7/6).
    m = text_metrics(["the cat sat on the mat"], ["the cat sat on the mat today"], wordnet=NoSynonyms())
    assert m["bleu4"] == pytest.approx(math.exp(1 - 7 / 6))
    assert m["rouge_l"] == pytest.approx(2 * 6 / 13)  # LCS 6: P = 6/6, R = 6/7
    assert m["token_recall"] == pytest.approx(5 / 6)
    # LCS "a c d" = 3 of 4 tokens each way; recall of {a, c, d, e} is 3/4.
    m = text_metrics(["a b c d"], ["a c d e"], wordnet=NoSynonyms())
    assert m["rouge_l"] == pytest.approx(0.75) and m["token_recall"] == pytest.approx(0.75)
    same = text_metrics(["A pink papule."], ["A pink papule."], wordnet=NoSynonyms())
    assert same["bleu4"] == pytest.approx(1.0) and same["rouge_l"] == same["token_recall"] == 1.0


def test_meteor_with_injected_wordnet():
    # Identical 6-token sentences: F = 1, one chunk -> penalty 0.5 * (1/6)^3.
    assert meteor(["the cat sat on the mat"], ["the cat sat on the mat"], NoSynonyms()) == pytest.approx(1 - 0.5 / 216)
    assert meteor(["dog"], ["the cat sat on the mat"], NoSynonyms()) == 0.0


def test_meteor_and_bertscore_degrade_gracefully():
    if local_wordnet()[0] is not None:
        pytest.skip("WordNet is installed locally; the unavailable path cannot be exercised")
    m = text_metrics(["a pink papule"], ["a pink plaque"])
    assert m["meteor"] is None and "WordNet" in m["unavailable"]["meteor"]
    assert m["bertscore_f1"] is None and "model directory" in m["unavailable"]["bertscore_f1"]


def test_caption_text_metrics_counts_failures_as_empty():
    m = caption_text_metrics([REF, None], [REF, REF], wordnet=NoSynonyms())
    assert m["token_recall"] == pytest.approx(0.5) and m["rouge_l"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        text_metrics([], [])


def test_bertscore_with_a_local_tiny_model(tmp_path):
    pytest.importorskip("bert_score")
    from transformers import BertConfig, BertModel, BertTokenizer

    words = "a an the pink red papule plaque with scale on arm leg single".split()
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"))  # no model_max_length: the overflow case
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    model_dir = tmp_path / "bert"
    BertModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    same = text_metrics(["a pink papule on the arm"], ["a pink papule on the arm"],
                        bertscore_model_dir=model_dir, wordnet=NoSynonyms())
    assert same["bertscore_f1"] == pytest.approx(1.0, abs=1e-5) and "bertscore_f1" not in same["unavailable"]
    diff = text_metrics(["red plaque with scale"], ["a pink papule on the arm"], bertscore_model_dir=model_dir,
                        wordnet=NoSynonyms())
    assert diff["bertscore_f1"] < 0.999
