"""Schema-based clinical captions (Stage I): schema, vocab normalisation, parsing, captioners, metrics.

Heavy dependencies (transformers, torch, sacrebleu, rouge-score, nltk, bert-score) are imported lazily
inside the functions that need them, so importing this package stays cheap.
"""

from skinflow.captions.captioners import (
    Captioner,
    CaptionerConfig,
    CaptionerError,
    CaptionOutcome,
    CaptionRequest,
    FailureCode,
    LocalVLMCaptioner,
    LocalVLMSettings,
    OpenAICompatibleCaptioner,
    OpenAICompatibleSettings,
    OracleCaptioner,
    caption_prompt,
    make_captioner,
)
from skinflow.captions.diagnosis_terms import GENERIC_DIAGNOSIS_TERMS, mentions_diagnosis
from skinflow.captions.metrics import aggregate, caption_text_metrics, field_scores, text_metrics
from skinflow.captions.parser import (
    MAX_DIAGNOSES,
    DiagnosisParse,
    ParseError,
    ParseErrorCode,
    ParseResult,
    parse_caption,
    parse_diagnoses,
    render_caption,
    render_diagnoses,
)
from skinflow.captions.schema import (
    SUMMARY_MAX_CHARS,
    Caption,
    caption_json_schema,
    compose_summary,
    write_caption_schema,
)
from skinflow.captions.synonyms import (
    SynonymTable,
    load_synonyms,
    normalise_caption_dict,
    normalise_term,
    synonyms_version,
)
from skinflow.vocab import SCHEMA_VERSION

__all__ = [
    "GENERIC_DIAGNOSIS_TERMS", "MAX_DIAGNOSES", "SCHEMA_VERSION", "SUMMARY_MAX_CHARS",
    "Caption", "CaptionOutcome", "CaptionRequest", "Captioner", "CaptionerConfig", "CaptionerError",
    "DiagnosisParse", "FailureCode", "LocalVLMCaptioner", "LocalVLMSettings",
    "OpenAICompatibleCaptioner", "OpenAICompatibleSettings", "OracleCaptioner", "ParseError",
    "ParseErrorCode", "ParseResult", "SynonymTable",
    "aggregate", "caption_json_schema", "caption_prompt", "caption_text_metrics", "compose_summary",
    "field_scores", "load_synonyms", "make_captioner", "mentions_diagnosis", "normalise_caption_dict",
    "normalise_term", "parse_caption", "parse_diagnoses", "render_caption", "render_diagnoses",
    "synonyms_version", "text_metrics", "write_caption_schema",
]
