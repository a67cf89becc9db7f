"""Captions from a table: a CSV or JSONL of image id -> caption text written elsewhere.

Experts, caption datasets and report exports describe images in free text, sometimes in schema JSON.
JSON goes through ``parse_caption``. Free text is mapped onto the schema field by field with the synonym
table (:func:`free_text_to_fields`); fields the text never states come from configured ``defaults``, and
a caption that still lacks a required field fails with ``MISSING_FIELDS``, so the caption stage
quarantines it instead of inventing a value.

Free-text rules (version ``FREE_TEXT_RULES``; bump it when they change, it is part of the captioner version):

* Text is split into sentences (``. ! ? ;`` and brackets) and phrases (``,`` and ``:``); words are split on
  spaces and hyphens. At each word the longest run of 1-4 words (within a phrase) whose ``term_key`` is a
  synonym wins, so "well-defined border", "pigment network", "blue-grey" and "5 to 10 mm" are one term each.
* Cues. Words such as "regular", "good", "multiple" or "iv" name a value only in context, so terms of the
  ``_GUARDED`` fields count only with one of the field's ``_CUES`` words within ``WINDOW`` words in the same
  sentence (a border word for border regularity, "image"/"quality" for image quality; for lesion count the
  lesion noun must follow in the same phrase: "a single macule", not "multiple dots"). A word that names
  several fields ("irregular": border_regularity or configuration) goes to the field with the nearest cue,
  one in the word's own phrase beating one elsewhere in the sentence, and on a tie the cue after the word
  (adjectives precede their noun). Without a cue the word is reported as unresolved, never guessed:
  "irregular border" -> border_regularity, "irregular shape/outline" -> configuration, "irregular dots" -> neither.
* Negation. "no", "without", "non", ... negate the terms after them until the sentence ends, a word such as
  "but"/"with"/"showing", or a comma followed by a term of another field ("no crust, scale or ulceration").
  Negated terms are reported, not filled. A negated "secondary features" means secondary_features ["none"].
* A scalar field given two different terms is a conflict: reported and left unfilled (a default would hide
  it). Set fields collect every term; "none" is dropped when the text also names a real feature.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from pydantic import ValidationError

from skinflow.captions.captioners import CaptionerError, CaptionOutcome, CaptionRequest, FailureCode
from skinflow.captions.parser import parse_caption, render_caption
from skinflow.captions.schema import Caption, compose_summary
from skinflow.captions.synonyms import VOCAB_FIELDS, SynonymTable, default_synonyms, term_key
from skinflow.vocab import SCALAR_FIELDS, SCHEMA_VERSION, SET_FIELDS

FREE_TEXT_RULES = "table-free-text/1"
DEFAULT_DEFAULTS: dict[str, str | list[str]] = {"body_site": "unknown", "fitzpatrick_type": "unknown"}
MAX_NGRAM = 4
WINDOW = 5  # how far a cue word may stand from its term, counting words other than "the", "is", "and", ...

_SENTENCE = re.compile(r"[.!?;]+(?=\s|$)|[()\[\]{}\n]")  # "0.5-1 cm" keeps its point
_PHRASE = re.compile(r"[,:]")
_WORD_SPLIT = re.compile(r"[\s\-\u2010-\u2015]+")

_BORDER = frozenset({"border", "borders", "bordered", "margin", "margins", "edge", "edges", "periphery"})
_SHAPE = frozenset({"shape", "shaped", "outline", "outlines", "configuration", "contour", "contours", "silhouette"})
_LESION = frozenset({"lesion", "lesions"})


class _Cue(NamedTuple):
    words: frozenset[str]
    before: int = WINDOW  # how many words before the term a cue may stand
    after: int = WINDOW
    morphology: bool = False  # the table's primary_morphology words are cues too
    same_phrase: bool = False  # the cue must stand in the term's own phrase


# Guarded fields need a cue for every term; the others only to settle a word that several fields share.
_CUES: dict[str, _Cue] = {
    "image_quality": _Cue(frozenset({"image", "images", "quality", "photo", "photograph", "picture", "focus",
                                     "focused", "view", "lighting"})),
    "fitzpatrick_type": _Cue(frozenset({"fitzpatrick", "phototype", "type", "skin"})),
    # the count must qualify the lesion noun after it: "a single ... macule", not "multiple dots"
    "lesion_count": _Cue(_LESION, before=0, after=4, morphology=True, same_phrase=True),
    "distribution": _Cue(frozenset({"distribution", "distributed"}) | _LESION),
    "border_regularity": _Cue(_BORDER),
    "border_definition": _Cue(_BORDER | _LESION, morphology=True),
    "configuration": _Cue(_SHAPE),
    "body_site": _Cue(frozenset({"site", "located", "location", "body"})),
}
_GUARDED = frozenset({"image_quality", "fitzpatrick_type", "lesion_count", "distribution",
                      "border_regularity", "border_definition"})
_NEGATORS = frozenset({"no", "without", "non", "nor", "neither", "lacks", "lacking", "absence"})
_NEGATION_ENDS = frozenset({"but", "with", "showing", "shows", "show", "has", "have", "having", "featuring",
                            "plus", "while", "whereas", "although"})
_NONE_PHRASES = frozenset({"secondaryfeatures", "secondaryfeature", "secondarychanges", "surfacechanges"})
_FILLER = frozenset({"a", "an", "the", "of", "and", "or", "in", "on", "at", "to", "is", "are", "its", "it",
                     "this", "that", "there", "by", "from", "into", "as", "be", "so", "than", "some", "very"})


class MatchedTerm(NamedTuple):
    field: str
    term: str
    text: str  # the words of the source that named it


@dataclass(frozen=True)
class FreeTextMapping:
    """What one free-text caption says about each schema field."""

    fields: Mapping[str, str | tuple[str, ...]]  # stated values; conflicts excluded
    terms: tuple[MatchedTerm, ...] = ()
    conflicts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    negated: tuple[MatchedTerm, ...] = ()
    unresolved: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (words, candidate fields) without a cue
    unmapped: tuple[str, ...] = ()  # phrases that named nothing

    @property
    def stated(self) -> tuple[str, ...]:
        return tuple(f for f in VOCAB_FIELDS if f in self.fields)

    def notes(self) -> list[str]:
        notes = [f"{f}: conflicting {' vs '.join(t)}" for f, t in sorted(self.conflicts.items())]
        notes += [f"unresolved {text!r} ({'/'.join(fields)}: no cue)" for text, fields in self.unresolved]
        notes += [f"negated {m.text!r}" for m in self.negated]
        notes += [f"unmapped {text!r}" for text in self.unmapped]
        return notes


@dataclass(frozen=True)
class _Index:
    terms: Mapping[str, tuple[tuple[str, str], ...]]  # key -> ((field, term), ...)
    cues: Mapping[str, _Cue]


_INDEXES: dict[int, tuple[SynonymTable, _Index]] = {}


def _index(table: SynonymTable) -> _Index:
    cached = _INDEXES.get(id(table))
    if cached is not None and cached[0] is table:
        return cached[1]
    terms: dict[str, list[tuple[str, str]]] = {}
    for name in VOCAB_FIELDS:
        for key, term in table.lookup.get(name, {}).items():
            terms.setdefault(key, []).append((name, term))
    morphology = frozenset(table.lookup.get("primary_morphology", {}))
    cues = {name: cue._replace(words=cue.words | morphology) if cue.morphology else cue for name, cue in _CUES.items()}
    index = _Index({k: tuple(v) for k, v in terms.items()}, cues)
    _INDEXES[id(table)] = (table, index)
    return index


class _Word(NamedTuple):
    key: str
    text: str
    phrase: int
    pos: int  # for cue distances: hyphen parts share one, filler words ("the", "is") take none of their own


def _sentences(text: str) -> list[list[_Word]]:
    out = []
    for sentence in _SENTENCE.split(text):
        words, pos = [], 0
        for p, phrase in enumerate(_PHRASE.split(sentence)):
            for spaced in phrase.split():
                parts = [(term_key(raw), raw.strip(".,;:!?\"'`*")) for raw in _WORD_SPLIT.split(spaced)]
                parts = [(key, raw) for key, raw in parts if key]
                pos += any(key not in _FILLER for key, _ in parts)
                words += [_Word(key, raw, p, pos) for key, raw in parts]
        if words:
            out.append(words)
    return out


def _cue_rank(words: list[_Word], start: int, end: int, cue: _Cue) -> tuple[int, int, int] | None:
    """(0 same phrase / 1 same sentence, distance, 0 after / 1 before) of the nearest cue, or None."""
    keys, before, after = cue.words, cue.before, cue.after
    phrase = words[start].phrase
    best = None
    for j, word in enumerate(words):
        if word.key not in keys or (cue.same_phrase and word.phrase != phrase):
            continue
        if start <= j < end:
            rank = (0, 0, 0)  # the synonym itself contains the cue ("high quality", "type iv")
        elif j >= end and word.pos - words[end - 1].pos <= after:
            rank = (word.phrase != phrase, word.pos - words[end - 1].pos, 0)
        elif j < start and words[start].pos - word.pos <= before:
            rank = (word.phrase != phrase, words[start].pos - word.pos, 1)
        else:
            continue
        best = rank if best is None or rank < best else best
    return best


def _place(words: list[_Word], start: int, end: int, candidates: tuple[tuple[str, str], ...],
           index: _Index) -> tuple[tuple[str, str] | None, tuple[str, ...]]:
    """The (field, term) a matched word belongs to, else (None, candidate fields that lacked a cue)."""
    fields = tuple(f for f, _ in candidates)
    if len(candidates) == 1 and fields[0] not in _GUARDED:
        return candidates[0], ()
    ranked = []
    for name, term in candidates:
        cue = index.cues.get(name)
        rank = _cue_rank(words, start, end, cue) if cue else None
        if rank is not None:
            ranked.append((rank, name, term))
    ranked.sort()
    if not ranked or (len(ranked) > 1 and ranked[0][0] == ranked[1][0]):
        return None, fields
    return (ranked[0][1], ranked[0][2]), ()


def _longest_match(words: list[_Word], i: int, index: _Index, negating: bool
                   ) -> tuple[int, tuple[tuple[str, str], ...], bool] | None:
    """(length, candidate (field, term) pairs, negated) of the longest synonym starting at word i."""
    for n in range(MAX_NGRAM, 0, -1):
        span = words[i : i + n]
        if len(span) < n or span[-1].phrase != span[0].phrase:
            continue
        key = "".join(w.key for w in span)
        if negating and key in _NONE_PHRASES:
            return n, (("secondary_features", "none"),), False
        if key in index.terms:
            return n, index.terms[key], negating
    return None


def free_text_to_fields(text: str, synonyms: SynonymTable | None = None) -> FreeTextMapping:
    """Map free clinical text onto the caption schema field by field (rules in the module docstring)."""
    index = _index(synonyms or default_synonyms())
    found: list[MatchedTerm] = []
    negated: list[MatchedTerm] = []
    unresolved: list[tuple[str, tuple[str, ...]]] = []
    unmapped: list[str] = []
    for words in _sentences(text):
        used: set[int] = set()
        negating, negated_field, i = False, "", 0
        while i < len(words):
            match = _longest_match(words, i, index, negating)
            if negating and i and words[i].phrase != words[i - 1].phrase:
                # Past a comma negation goes on only through a list of the same field: "no crust, scale or
                # ulceration" but not "without secondary features, good image quality".
                negating = match is not None and negated_field in {f for f, _ in match[1]}
                match = _longest_match(words, i, index, negating)
            if match is None:
                if words[i].key in _NEGATORS:
                    negating = True
                elif words[i].key in _NEGATION_ENDS:
                    negating = False
                i += 1
                continue
            n, candidates, is_negated = match
            source = " ".join(w.text for w in words[i : i + n])
            placed, lacking = _place(words, i, i + n, candidates, index)
            if placed is None:
                unresolved.append((source, lacking))
            elif is_negated:
                negated.append(MatchedTerm(placed[0], placed[1], source))
                negated_field = placed[0]
            else:
                found.append(MatchedTerm(placed[0], placed[1], source))
            used.update(range(i, i + n))
            negating = negating or words[i].key in _NEGATORS  # "no secondary features such as scale"
            i += n
        for p in sorted({w.phrase for w in words}):
            members = [j for j, w in enumerate(words) if w.phrase == p]
            content = [j for j in members if words[j].key not in _FILLER | _NEGATORS]
            if content and not used.intersection(members):
                unmapped.append(" ".join(words[j].text for j in members))
    return _collect(found, negated, unresolved, unmapped)


def _collect(found: list[MatchedTerm], negated: list[MatchedTerm],
             unresolved: list[tuple[str, tuple[str, ...]]], unmapped: list[str]) -> FreeTextMapping:
    values: dict[str, str | tuple[str, ...]] = {}
    conflicts: dict[str, tuple[str, ...]] = {}
    for name, vocabulary in VOCAB_FIELDS.items():
        terms = {m.term for m in found if m.field == name}
        if name == "secondary_features" and len(terms) > 1:
            terms.discard("none")  # "no secondary features other than a pigment network"
        ordered = tuple(t for t in vocabulary if t in terms)
        if not ordered:
            continue
        if name in SCALAR_FIELDS and len(ordered) > 1:
            conflicts[name] = ordered
        else:
            values[name] = ordered[0] if name in SCALAR_FIELDS else ordered
    return FreeTextMapping(values, tuple(found), conflicts, tuple(negated), tuple(unresolved), tuple(unmapped))


# ---- defaults ---------------------------------------------------------------------------------------


def check_defaults(defaults: Mapping[str, Any]) -> dict[str, str | tuple[str, ...]]:
    """Validate a field -> vocabulary term(s) mapping; ValueError names the first bad key or value."""
    out: dict[str, str | tuple[str, ...]] = {}
    for name, value in defaults.items():
        if name not in VOCAB_FIELDS:
            raise ValueError(f"defaults: {name!r} is not a schema field; fields are {sorted(VOCAB_FIELDS)}")
        vocabulary = VOCAB_FIELDS[name]
        values = [value] if isinstance(value, str) else value
        if name in SCALAR_FIELDS and not isinstance(value, str):
            raise ValueError(f"defaults.{name}: takes one term, got {value!r}")
        if not isinstance(values, list | tuple) or not values:
            raise ValueError(f"defaults.{name}: needs a term or a non-empty list of terms, got {value!r}")
        for item in values:
            if item not in vocabulary:
                hint = default_synonyms().term(name, item)
                hint_text = f" (did you mean {hint!r}?)" if hint else ""
                raise ValueError(f"defaults.{name}: {item!r} is not a {name} term{hint_text}; "
                                 f"terms are {list(vocabulary)}")
        if name == "secondary_features" and "none" in values and len(values) > 1:
            raise ValueError("defaults.secondary_features: 'none' cannot be combined with other terms")
        out[name] = value if isinstance(value, str) else tuple(t for t in vocabulary if t in values)
    return out


# ---- the table ------------------------------------------------------------------------------------------


class _Row(NamedTuple):
    text: str
    where: str  # "row 3 (line 4)" / "line 7", for messages


def _read_table(path: Path, data: bytes, id_column: str, text_column: str) -> dict[str, _Row]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CaptionerError(f"{path}: captions table is not UTF-8 text ({exc})") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records = _jsonl_records(path, text, id_column, text_column)
    elif suffix == ".csv":
        records = _csv_records(path, text, id_column, text_column)
    else:
        raise CaptionerError(f"{path}: unsupported captions table {suffix or 'without extension'}; "
                             "use .csv (with a header) or .jsonl")
    rows: dict[str, _Row] = {}
    for where, image_id, caption in records:
        if not image_id:
            raise CaptionerError(f"{path}: {where}: empty {id_column!r}")
        if image_id in rows:
            raise CaptionerError(f"{path}: {where}: duplicate image id {image_id!r} "
                                 f"(first at {rows[image_id].where})")
        rows[image_id] = _Row(caption, where)
    if not rows:
        raise CaptionerError(f"{path}: captions table has no rows")
    return rows


def _csv_records(path: Path, text: str, id_column: str, text_column: str) -> list[tuple[str, str, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records = []
    try:
        header = reader.fieldnames or []
        for column, role in ((id_column, "id_column"), (text_column, "text_column")):
            if column not in header:
                raise CaptionerError(f"{path}: no column {column!r} ({role}); the header has {header}")
        for n, row in enumerate(reader, start=1):
            where = f"row {n} (line {reader.line_num})"
            if row.get(text_column) is None or row.get(id_column) is None:
                raise CaptionerError(f"{path}: {where}: too few fields (no {text_column!r} value)")
            records.append((where, row[id_column].strip(), row[text_column]))
    except csv.Error as exc:
        raise CaptionerError(f"{path}: line {reader.line_num}: {exc}") from None
    return records


def _jsonl_records(path: Path, text: str, id_column: str, text_column: str) -> list[tuple[str, str, str]]:
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise CaptionerError(f"{path}: {where}: invalid JSON ({exc})") from None
        if not isinstance(obj, dict) or id_column not in obj or text_column not in obj:
            raise CaptionerError(f"{path}: {where}: needs an object with keys {id_column!r} and {text_column!r}")
        image_id, caption = obj[id_column], obj[text_column]
        if isinstance(image_id, bool) or not isinstance(image_id, str | int):
            raise CaptionerError(f"{path}: {where}: {id_column!r} must be a string, got {image_id!r}")
        if isinstance(caption, dict):  # a schema caption stored inline as an object
            caption = json.dumps(caption, sort_keys=True)
        elif caption is None:
            caption = ""
        elif not isinstance(caption, str):
            raise CaptionerError(f"{path}: {where}: {text_column!r} must be text, got {type(caption).__name__}")
        records.append((where, str(image_id).strip(), caption))
    return records


# ---- the captioner -----------------------------------------------------------------------------------------


class TableCaptioner:
    """Captions looked up by image id in a CSV/JSONL table (see module docstring).

    The table is read once, here; a changed table (bytes), changed settings or synonyms change ``version``,
    so the caption stage does not reuse progress made with another table. ``report()`` says, over every
    request so far, which schema fields the source stated, which came from defaults and which were missing.
    """

    name = "table"

    def __init__(self, path: str | Path, id_column: str = "image_id", text_column: str = "caption",
                 defaults: Mapping[str, Any] | None = None, *, synonyms: SynonymTable | None = None) -> None:
        self.path = Path(path)
        self.id_column, self.text_column = id_column, text_column
        try:
            self.defaults = check_defaults(DEFAULT_DEFAULTS if defaults is None else defaults)
        except ValueError as exc:
            raise CaptionerError(str(exc)) from None
        self.synonyms = synonyms or default_synonyms()
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise CaptionerError(f"{self.path}: cannot read captions table ({exc.strerror or exc})") from None
        self._rows = _read_table(self.path, data, id_column, text_column)
        self.table_sha256 = hashlib.sha256(data).hexdigest()
        settings = json.dumps({"id_column": id_column, "text_column": text_column, "defaults": self.defaults,
                               "rules": FREE_TEXT_RULES, "schema": SCHEMA_VERSION}, sort_keys=True)
        digest = hashlib.sha256(settings.encode()).hexdigest()
        self.version = f"{self.table_sha256[:12]}-{digest[:8]}:{self.synonyms.version}"
        self._requested: set[str] = set()
        self._outcomes: Counter[str] = Counter()
        self._formats: Counter[str] = Counter()
        self._coverage = {name: Counter() for name in VOCAB_FIELDS}
        self._unmapped: Counter[str] = Counter()

    def caption(self, items: list[CaptionRequest]) -> list[CaptionOutcome]:
        outcomes = []
        for item in items:
            self._requested.add(item.image_id)
            outcome = self._one(item.image_id)
            self._outcomes["ok" if outcome.status == "ok" else str(outcome.error_code)] += 1
            outcomes.append(outcome)
        return outcomes

    def _one(self, image_id: str) -> CaptionOutcome:
        row = self._rows.get(image_id)
        if row is None:
            return CaptionOutcome.failed(image_id, FailureCode.NOT_IN_TABLE,
                                         f"no row for this image in {self.path.name} ({self.id_column!r})", 1)
        text = row.text.strip()
        if not text:
            return CaptionOutcome.failed(image_id, FailureCode.EMPTY_TEXT, f"empty caption at {row.where}", 1)
        if text.startswith("{"):
            self._formats["json"] += 1
            result = parse_caption(text, synonyms=True)
            if not result.ok:
                assert result.error is not None
                return CaptionOutcome.failed(image_id, result.error.code, result.error.message, 1, text)
            for name in VOCAB_FIELDS:
                self._coverage[name]["stated"] += 1
            return CaptionOutcome(image_id, "ok", render_caption(result.caption), attempts=1)  # type: ignore[arg-type]
        self._formats["free_text"] += 1
        return self._from_free_text(image_id, text)

    def _from_free_text(self, image_id: str, text: str) -> CaptionOutcome:
        mapping = free_text_to_fields(text, self.synonyms)
        self._unmapped.update(phrase.casefold() for phrase in mapping.unmapped)
        values: dict[str, Any] = dict(mapping.fields)
        missing = []
        for name in VOCAB_FIELDS:
            if name in values:
                source = "stated"
            elif name in self.defaults and name not in mapping.conflicts and mapping.stated:
                values[name], source = self.defaults[name], "defaulted"
            else:
                missing.append(name)
                source = "missing"
            self._coverage[name][source] += 1
            if name in mapping.conflicts:
                self._coverage[name]["conflicting"] += 1
        if missing:
            what = "the text states no schema field" if not mapping.stated else f"missing {', '.join(missing)}"
            detail = "; ".join([what, *mapping.notes()])
            return CaptionOutcome.failed(image_id, FailureCode.MISSING_FIELDS, detail, 1, text)
        fields = {k: list(v) if k in SET_FIELDS else v for k, v in values.items()}
        try:
            draft = Caption.model_validate({**fields, "summary": "pending"}).model_dump()
            caption = Caption.model_validate({**draft, "summary": compose_summary(draft)})
        except ValidationError as exc:  # not expected: mapped terms are vocabulary terms
            return CaptionOutcome.failed(image_id, FailureCode.INVALID_ATTRIBUTES, str(exc), 1, text)
        return CaptionOutcome(image_id, "ok", render_caption(caption), attempts=1)

    def report(self) -> dict[str, Any]:
        """Source coverage over every request so far; JSON-ready and deterministic (no paths, no times).

        Per field, over the captions whose text was mapped (free text, or JSON that parsed): stated +
        defaulted + missing = that count; conflicting (two terms for one scalar) is part of missing.
        """
        unmapped = sorted(self._unmapped.items(), key=lambda kv: (-kv[1], kv[0]))[:25]
        return {
            "table_file": self.path.name,
            "table_sha256": self.table_sha256,
            "table_rows": len(self._rows),
            "synonyms_version": self.synonyms.version,
            "rules_version": FREE_TEXT_RULES,
            "defaults": {k: v if isinstance(v, str) else list(v) for k, v in sorted(self.defaults.items())},
            "requests": sum(self._outcomes.values()),
            "outcomes": dict(sorted(self._outcomes.items())),
            "text_format": {"free_text": self._formats["free_text"], "json": self._formats["json"]},
            "fields": {name: {k: self._coverage[name][k] for k in ("conflicting", "defaulted", "missing", "stated")}
                       for name in sorted(VOCAB_FIELDS)},
            "unmapped_phrases": [{"count": n, "text": t} for t, n in unmapped],
            "unused_table_rows": sorted(set(self._rows) - self._requested),
        }
