"""Caption quality against reference captions.

Structured metrics (the ones the schema makes possible): exact match per scalar field and F1 per set
field; an unparsable prediction (``None``) scores 0 on every field, so failures are never averaged
away. Text metrics in MM-Skin's style on summary/description strings: corpus BLEU-4 (sacrebleu),
ROUGE-L F (rouge-score), METEOR (nltk; needs WordNet on local disk), token recall and BERTScore
(bert-score; only with a local model directory). All text metrics are on a 0-1 scale. A metric that
cannot run is reported as ``None`` with the reason in ``unavailable`` instead of failing the run or
downloading anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean
from typing import Any, Sequence

from skinflow.captions.schema import Caption
from skinflow.vocab import SCALAR_FIELDS, SET_FIELDS

FIELDS = (*SCALAR_FIELDS, *SET_FIELDS)


def set_f1(pred: Sequence[str], ref: Sequence[str]) -> float:
    p, r = set(pred), set(ref)
    if not p and not r:
        return 1.0
    hit = len(p & r)
    return 0.0 if hit == 0 else 2 * hit / (len(p) + len(r))


def field_scores(pred: Caption | None, ref: Caption) -> dict[str, float]:
    """Per-field score in [0, 1]: exact match (scalar fields) or F1 (set fields)."""
    if pred is None:
        return {field: 0.0 for field in FIELDS}
    scores = {f: float(getattr(pred, f) == getattr(ref, f)) for f in SCALAR_FIELDS}
    scores.update({f: set_f1(getattr(pred, f), getattr(ref, f)) for f in SET_FIELDS})
    return scores


def aggregate(preds: Sequence[Caption | None], refs: Sequence[Caption]) -> dict[str, float]:
    """Mean per-field scores plus ``scalar_accuracy``, ``set_f1``, ``macro`` and ``valid_rate``."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    if not refs:
        raise ValueError("no captions to score")
    rows = [field_scores(p, r) for p, r in zip(preds, refs)]
    out = {f: fmean(row[f] for row in rows) for f in FIELDS}
    out["scalar_accuracy"] = fmean(out[f] for f in SCALAR_FIELDS)
    out["set_f1"] = fmean(out[f] for f in SET_FIELDS)
    out["macro"] = fmean(out[f] for f in FIELDS)
    out["valid_rate"] = sum(p is not None for p in preds) / len(preds)
    out["n"] = float(len(refs))
    return out


# ---- text metrics ------------------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    # rouge-score's tokenizer (lower-case alphanumerics) so ROUGE, METEOR and recall agree on tokens.
    from rouge_score import tokenize

    return tokenize.tokenize(text, None)


def bleu4(hyps: Sequence[str], refs: Sequence[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score / 100.0


def rouge_l(hyps: Sequence[str], refs: Sequence[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return fmean(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs))


def token_recall(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Mean fraction of distinct reference tokens that appear in the hypothesis."""
    scores = []
    for h, r in zip(hyps, refs):
        ref_tokens = set(_tokens(r))
        scores.append(len(ref_tokens & set(_tokens(h))) / len(ref_tokens) if ref_tokens else 1.0)
    return fmean(scores)


def local_wordnet() -> tuple[Any, str | None]:
    """(WordNet reader, None) if WordNet is on local disk, else (None, reason). Never downloads."""
    try:
        from nltk.corpus import wordnet
    except ImportError as exc:
        return None, f"nltk not installed ({exc})"
    try:
        wordnet.ensure_loaded()  # searches nltk.data.path for wordnet/ or wordnet.zip
    except LookupError:
        return None, "WordNet corpus not found in nltk.data.path; METEOR skipped"
    return wordnet, None


def meteor(hyps: Sequence[str], refs: Sequence[str], wordnet: Any) -> float:
    """Mean sentence METEOR; ``wordnet`` is any object with nltk's ``synsets`` interface."""
    from nltk.translate.meteor_score import meteor_score

    return fmean(meteor_score([_tokens(r)], _tokens(h), wordnet=wordnet) for h, r in zip(hyps, refs))


def bertscore_f1(hyps: Sequence[str], refs: Sequence[str], model_dir: str | Path) -> float:
    """Mean BERTScore F1 with a local model (last layer; no baseline rescaling, no hub access)."""
    from bert_score import BERTScorer

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    scorer = BERTScorer(model_type=str(model_dir), num_layers=config["num_hidden_layers"])
    # Tokenizers saved without model_max_length report ~1e30, which overflows the fast tokenizer.
    limit = config.get("max_position_embeddings", 512)
    if scorer._tokenizer.model_max_length > limit:
        scorer._tokenizer.model_max_length = limit
    _, _, f1 = scorer.score(list(hyps), list(refs))
    return float(f1.mean())


def text_metrics(
    hyps: Sequence[str],
    refs: Sequence[str],
    *,
    bertscore_model_dir: str | Path | None = None,
    wordnet: Any = None,
) -> dict[str, Any]:
    """BLEU-4, ROUGE-L, METEOR, token recall and BERTScore F1 over paired strings.

    ``wordnet`` overrides the local WordNet lookup (tests pass a stub). Returns the metrics (None when
    unavailable) and ``unavailable``: metric -> reason.
    """
    if len(hyps) != len(refs) or not refs:
        raise ValueError(f"need equal, non-zero numbers of hypotheses and references ({len(hyps)}, {len(refs)})")
    hyps, refs = [h or "" for h in hyps], list(refs)
    out: dict[str, Any] = {
        "bleu4": bleu4(hyps, refs),
        "rouge_l": rouge_l(hyps, refs),
        "token_recall": token_recall(hyps, refs),
        "meteor": None,
        "bertscore_f1": None,
    }
    unavailable: dict[str, str] = {}
    if wordnet is None:
        wordnet, reason = local_wordnet()
        if reason:
            unavailable["meteor"] = reason
    if wordnet is not None:
        out["meteor"] = meteor(hyps, refs, wordnet)
    if bertscore_model_dir is None:
        unavailable["bertscore_f1"] = "no local BERTScore model directory configured"
    else:
        try:
            out["bertscore_f1"] = bertscore_f1(hyps, refs, bertscore_model_dir)
        except ImportError as exc:
            unavailable["bertscore_f1"] = f"bert-score not installed ({exc})"
    out["unavailable"] = unavailable
    return out


def caption_text_metrics(
    preds: Sequence[Caption | None], refs: Sequence[Caption], **kwargs: Any
) -> dict[str, Any]:
    """Text metrics on caption summaries; an unparsable prediction contributes an empty string."""
    return text_metrics([p.summary if p else "" for p in preds], [r.summary for r in refs], **kwargs)
