"""Render and parse model outputs: the Stage I caption JSON and the Stage II diagnosis list.

Both parsers are total: any ``str`` (and any other object) yields a result, never an exception, so
RL reward functions and evaluation loops can call them on raw generations. Failures carry a code from
the closed ``ParseErrorCode`` enum, chosen by a fixed priority when several problems coexist, so the
same text always gets the same code.

Tolerated wrappers: leading prose ("Description: ..."), markdown fences and trailing text after the
first complete JSON object. Only the first ``{`` is tried: braces in leading prose are not expected
from a model trained on the compact rendering, and trying later ones would turn a truncated object
into a misleading "valid" inner one.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from pydantic import ValidationError

from skinflow.captions.schema import Caption
from skinflow.captions.synonyms import normalise_caption_dict
from skinflow.vocab import SCALAR_FIELDS, SET_FIELDS

MAX_INPUT_CHARS = 20_000  # a 512-token generation is ~2k chars; longer input is runaway output
MAX_DIAGNOSES = 6
_VOCAB_FIELDS = {**SCALAR_FIELDS, **SET_FIELDS}


class ParseErrorCode(str, enum.Enum):
    EMPTY = "EMPTY"
    TOO_LONG = "TOO_LONG"  # input or summary over its length limit
    NOT_JSON = "NOT_JSON"
    TRUNCATED = "TRUNCATED"  # unbalanced braces/brackets or an unterminated string
    NOT_OBJECT = "NOT_OBJECT"
    DUPLICATE_KEY = "DUPLICATE_KEY"
    WRONG_SCHEMA_VERSION = "WRONG_SCHEMA_VERSION"
    UNKNOWN_FIELD = "UNKNOWN_FIELD"
    MISSING_FIELD = "MISSING_FIELD"
    WRONG_TYPE = "WRONG_TYPE"
    OFF_VOCABULARY = "OFF_VOCABULARY"
    EMPTY_VALUE = "EMPTY_VALUE"  # empty list, empty string
    INVALID_VALUE = "INVALID_VALUE"  # e.g. 'none' combined with other secondary features
    NOT_ONE_SENTENCE = "NOT_ONE_SENTENCE"
    DIAGNOSIS_IN_SUMMARY = "DIAGNOSIS_IN_SUMMARY"
    TOO_MANY = "TOO_MANY"  # more than MAX_DIAGNOSES diagnoses
    DUPLICATE_ITEM = "DUPLICATE_ITEM"
    UNRECOGNISED_FORMAT = "UNRECOGNISED_FORMAT"  # neither JSON nor a numbered list
    INTERNAL = "INTERNAL"  # a parser bug; tests assert it never happens

    def __str__(self) -> str:
        return self.value


# When several validation problems occur, report the most structural one.
_PRIORITY = [
    ParseErrorCode.WRONG_SCHEMA_VERSION, ParseErrorCode.UNKNOWN_FIELD, ParseErrorCode.MISSING_FIELD,
    ParseErrorCode.WRONG_TYPE, ParseErrorCode.OFF_VOCABULARY, ParseErrorCode.EMPTY_VALUE,
    ParseErrorCode.INVALID_VALUE, ParseErrorCode.TOO_LONG, ParseErrorCode.NOT_ONE_SENTENCE,
    ParseErrorCode.DIAGNOSIS_IN_SUMMARY,
]
_PYDANTIC_CODES = {
    "extra_forbidden": ParseErrorCode.UNKNOWN_FIELD,
    "missing": ParseErrorCode.MISSING_FIELD,
    "too_short": ParseErrorCode.EMPTY_VALUE,
    "string_too_short": ParseErrorCode.EMPTY_VALUE,
    "string_too_long": ParseErrorCode.TOO_LONG,
    "summary_too_long": ParseErrorCode.TOO_LONG,
    "summary_not_one_sentence": ParseErrorCode.NOT_ONE_SENTENCE,
    "diagnosis_in_summary": ParseErrorCode.DIAGNOSIS_IN_SUMMARY,
    "none_not_alone": ParseErrorCode.INVALID_VALUE,
}


@dataclass(frozen=True)
class ParseError:
    code: ParseErrorCode
    message: str


@dataclass(frozen=True)
class ParseResult:
    ok: bool
    caption: Caption | None = None
    error: ParseError | None = None
    unknown_terms: tuple[tuple[str, str], ...] = ()  # (field, raw term) off the vocabulary


@dataclass(frozen=True)
class DiagnosisParse:
    ok: bool
    diagnoses: tuple[str, ...] = ()  # ranked, raw strings (whitespace-stripped)
    error: ParseError | None = None


def _fail(code: ParseErrorCode, message: str, **extra: Any) -> ParseResult:
    return ParseResult(ok=False, error=ParseError(code, message), **extra)


# ---- JSON extraction (shared) --------------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _DuplicateKey(dup)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)
_FENCE = re.compile(r"^\s*```[\w-]*\s*|\s*```\s*$")
_PREAMBLE = re.compile(r"\s*(```[\w-]*)?\s*$")  # nothing but an opening fence before a value


def _is_open(text: str, start: int) -> bool:
    """True if the JSON value starting at ``start`` never closes (truncated output)."""
    depth, in_string, escaped = 0, False, False
    for ch in text[start:]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if depth == 0:  # a top-level string that closed
                    return False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth <= 0:
                return False
    return True


def _decode_at(text: str, start: int) -> tuple[Any, ParseError | None]:
    try:
        value, _ = _DECODER.raw_decode(text, start)  # trailing text after the value is tolerated
        return value, None
    except _DuplicateKey as exc:
        return None, ParseError(ParseErrorCode.DUPLICATE_KEY, f"duplicate key {exc.args[0]!r}")
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge ints, absurd nesting
        if _is_open(text, start):
            return None, ParseError(ParseErrorCode.TRUNCATED, "JSON ends before it is closed")
        return None, ParseError(ParseErrorCode.NOT_JSON, f"invalid JSON: {str(exc)[:120]}")


def _extract_json(text: str) -> tuple[Any, ParseError | None]:
    """First JSON value in ``text`` (object preferred), tolerating prose and fences around it."""
    brace = text.find("{")
    bracket = text.find("[")
    # A top-level list ("[{...}]" or a bare list) is decoded so callers can say NOT_OBJECT.
    if bracket >= 0 and (brace < 0 or bracket < brace) and _PREAMBLE.match(text, 0, bracket):
        return _decode_at(text, bracket)
    if brace >= 0:
        return _decode_at(text, brace)
    bare = _FENCE.sub("", text).strip()
    if bare[:1] in ('"', "[") and _is_open(bare, 0):
        return None, ParseError(ParseErrorCode.TRUNCATED, "JSON ends before it is closed")
    try:
        return json.loads(bare), None  # a scalar: valid JSON but not what we want
    except (ValueError, RecursionError):
        return None, ParseError(ParseErrorCode.NOT_JSON, "no JSON object found")


# ---- captions --------------------------------------------------------------------------------------


def render_caption(c: Caption) -> str:
    """Compact, deterministic JSON: the exact text the Stage I model is trained to emit."""
    return json.dumps(c.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_caption(
    text: Any, *, synonyms: bool = True, diagnosis_labels: Iterable[str] = ()
) -> ParseResult:
    """Parse a model's caption output. Total: returns a typed failure instead of raising.

    With ``synonyms`` free-text terms ("red", "well-circumscribed") are mapped onto the vocabulary;
    terms that still match nothing are listed in ``unknown_terms``. ``diagnosis_labels`` extends the
    built-in list of diagnosis names forbidden in the summary.
    """
    try:
        return _parse_caption(text, synonyms, tuple(diagnosis_labels))
    except Exception as exc:  # noqa: BLE001 - totality is the contract; INTERNAL flags the bug
        return _fail(ParseErrorCode.INTERNAL, f"{type(exc).__name__}: {str(exc)[:200]}")


def _parse_caption(text: Any, synonyms: bool, labels: tuple[str, ...]) -> ParseResult:
    if not isinstance(text, str):
        return _fail(ParseErrorCode.EMPTY if text is None else ParseErrorCode.WRONG_TYPE,
                     f"expected str, got {type(text).__name__}")
    if len(text) > MAX_INPUT_CHARS:
        return _fail(ParseErrorCode.TOO_LONG, f"input has {len(text)} characters (max {MAX_INPUT_CHARS})")
    if not text.strip():
        return _fail(ParseErrorCode.EMPTY, "empty output")
    obj, error = _extract_json(text)
    if error is not None:
        return ParseResult(ok=False, error=error)
    if not isinstance(obj, dict):
        return _fail(ParseErrorCode.NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    if synonyms:
        obj, _ = normalise_caption_dict(obj)  # unknowns stay raw and fail validation below
    try:
        caption = Caption.model_validate(obj, context={"diagnosis_labels": labels})
    except ValidationError as exc:
        return _validation_failure(exc)
    return ParseResult(ok=True, caption=caption)


def _validation_failure(exc: ValidationError) -> ParseResult:
    problems: list[tuple[ParseErrorCode, str]] = []
    unknown: list[tuple[str, str]] = []
    errors = exc.errors(include_url=False)
    # pydantic also says "too short" for a list whose only items were invalid: noise, skip it.
    item_errors = {e["loc"][0] for e in errors if len(e["loc"]) > 1}
    for err in errors:
        loc = err["loc"]
        field = str(loc[0]) if loc else ""
        kind = err["type"]
        if kind == "too_short" and field in item_errors:
            continue
        if kind == "literal_error" and field == "schema_version":
            code = ParseErrorCode.WRONG_SCHEMA_VERSION
        elif kind == "literal_error":
            raw = err.get("input")
            code = ParseErrorCode.OFF_VOCABULARY if isinstance(raw, str) else ParseErrorCode.WRONG_TYPE
            if isinstance(raw, str) and field in _VOCAB_FIELDS:
                unknown.append((field, raw))
                # pydantic's message lists the whole vocabulary; name the offending term instead.
                err = {**err, "msg": f"{raw[:60]!r} is not a {field} term"}
        elif kind in _PYDANTIC_CODES:
            code = _PYDANTIC_CODES[kind]
        elif kind.endswith("_type") or kind in ("is_instance_of", "model_type"):
            code = ParseErrorCode.WRONG_TYPE
        else:
            code = ParseErrorCode.INVALID_VALUE
        problems.append((code, f"{'.'.join(map(str, loc)) or '<root>'}: {err['msg']}"))
    code = min((c for c, _ in problems), key=_PRIORITY.index)
    message = "; ".join(m for c, m in problems if c == code)
    others = len(problems) - sum(1 for c, _ in problems if c == code)
    if others:
        message += f" (+{others} other problem{'s' if others > 1 else ''})"
    return _fail(code, message[:500], unknown_terms=tuple(unknown))


# ---- diagnosis lists ---------------------------------------------------------------------------------


def _diagnosis_key(label: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", label.casefold()))


def render_diagnoses(labels: Iterable[str]) -> str:
    """``{"diagnoses":[...]}`` compact JSON, ranked. Raises ValueError on an invalid list."""
    labels = list(labels)
    result = _check_diagnoses(labels)
    if not result.ok:
        assert result.error is not None
        raise ValueError(f"{result.error.code}: {result.error.message}")
    return json.dumps({"diagnoses": labels}, separators=(",", ":"), ensure_ascii=False)


_NUMBERED = re.compile(r"^\s*(\d{1,3})\s*[.):]\s*(.*?)\s*$")


def parse_diagnoses(text: Any) -> DiagnosisParse:
    """Ranked diagnosis list from ``{"diagnoses":[...]}``, a bare JSON list, or "1. a\\n2. b".

    Total. Strings are kept as written (whitespace-stripped); mapping onto taxonomy labels happens
    downstream.
    """
    try:
        return _parse_diagnoses(text)
    except Exception as exc:  # noqa: BLE001 - see parse_caption
        return DiagnosisParse(False, error=ParseError(ParseErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"[:200]))


def _dfail(code: ParseErrorCode, message: str) -> DiagnosisParse:
    return DiagnosisParse(ok=False, error=ParseError(code, message))


def _parse_diagnoses(text: Any) -> DiagnosisParse:
    if not isinstance(text, str):
        return _dfail(ParseErrorCode.EMPTY if text is None else ParseErrorCode.WRONG_TYPE,
                      f"expected str, got {type(text).__name__}")
    if len(text) > MAX_INPUT_CHARS:
        return _dfail(ParseErrorCode.TOO_LONG, f"input has {len(text)} characters")
    if not text.strip():
        return _dfail(ParseErrorCode.EMPTY, "empty output")
    if "{" in text or _FENCE.sub("", text).lstrip().startswith("["):
        obj, error = _extract_json(text)
        if error is not None:
            return DiagnosisParse(ok=False, error=error)
        if isinstance(obj, dict):
            extra = sorted(set(obj) - {"diagnoses"})
            if extra:
                return _dfail(ParseErrorCode.UNKNOWN_FIELD, f"unexpected keys {extra}")
            if "diagnoses" not in obj:
                return _dfail(ParseErrorCode.MISSING_FIELD, "missing key 'diagnoses'")
            obj = obj["diagnoses"]
        if not isinstance(obj, list):
            return _dfail(ParseErrorCode.WRONG_TYPE, f"diagnoses must be a list, got {type(obj).__name__}")
        items: list[Any] = obj
    else:
        numbered = [m for m in map(_NUMBERED.match, text.splitlines()) if m]
        if not numbered:
            return _dfail(ParseErrorCode.UNRECOGNISED_FORMAT, "neither JSON nor a numbered list")
        numbers = [int(m.group(1)) for m in numbered]
        if numbers != list(range(1, len(numbers) + 1)):
            return _dfail(ParseErrorCode.INVALID_VALUE, f"list numbered {numbers}, expected 1..{len(numbers)}")
        items = [m.group(2) for m in numbered]
    return _check_diagnoses(items)


def _check_diagnoses(items: list[Any]) -> DiagnosisParse:
    if not items:
        return _dfail(ParseErrorCode.EMPTY, "no diagnoses")
    if len(items) > MAX_DIAGNOSES:
        return _dfail(ParseErrorCode.TOO_MANY, f"{len(items)} diagnoses (max {MAX_DIAGNOSES})")
    bad = [type(x).__name__ for x in items if not isinstance(x, str)]
    if bad:
        return _dfail(ParseErrorCode.WRONG_TYPE, f"non-string items: {bad}")
    stripped = [x.strip() for x in items]
    keys = [_diagnosis_key(x) for x in stripped]
    if not all(keys):
        return _dfail(ParseErrorCode.EMPTY_VALUE, "empty diagnosis string")
    if len(set(keys)) != len(keys):
        dups = sorted({k for k in keys if keys.count(k) > 1})
        return _dfail(ParseErrorCode.DUPLICATE_ITEM, f"duplicate diagnoses {dups}")
    return DiagnosisParse(ok=True, diagnoses=tuple(stripped))
