"""Map free-text clinical terms onto the closed caption vocabulary.

The mapping lives in ``synonyms.yaml`` (a versioned data file) so clinicians can review it without
reading code. Lookups ignore case, surrounding punctuation, and all spaces/hyphens/underscores, so
"Skin-Colored", "skin colored" and "skin_colored" are one key. Terms that match nothing are returned
to the caller as unknown, never dropped: a silent drop would make a wrong caption look complete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from skinflow.vocab import SCALAR_FIELDS, SET_FIELDS

SYNONYMS_PATH = Path(__file__).with_name("synonyms.yaml")
VOCAB_FIELDS: dict[str, tuple[str, ...]] = {**SCALAR_FIELDS, **SET_FIELDS}

_EXACT = {field: frozenset(terms) for field, terms in VOCAB_FIELDS.items()}
_SEPARATORS = re.compile(r"[\s\-_\u2010-\u2015]+")  # whitespace, ASCII hyphen, unicode dashes
_EDGE_PUNCT = " \t\r\n.,;:!?\"'`()[]{}*"


class SynonymError(ValueError):
    """The synonyms file is malformed or maps one variant to two terms."""


def term_key(text: str) -> str:
    """Lookup key: case-folded, edge punctuation stripped, separators removed."""
    return _SEPARATORS.sub("", text.strip(_EDGE_PUNCT).casefold())


@dataclass(frozen=True)
class SynonymTable:
    version: str
    lookup: Mapping[str, Mapping[str, str]]  # field -> key -> vocabulary term

    def term(self, field: str, text: Any) -> str | None:
        if not isinstance(text, str):
            return None
        if text in _EXACT.get(field, ()):  # fast path: already a vocabulary term
            return text
        table = self.lookup.get(field)
        return None if table is None else table.get(term_key(text))


def load_synonyms(path: str | Path = SYNONYMS_PATH) -> SynonymTable:
    """Read and validate a synonyms file; every problem names the field and term."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("version"), str):
        raise SynonymError(f"{path}: needs a top-level string 'version' and 'fields' mapping")
    fields = data.get("fields") or {}
    unknown_fields = set(fields) - set(VOCAB_FIELDS)
    if unknown_fields:
        raise SynonymError(f"{path}: unknown fields {sorted(unknown_fields)}")
    lookup: dict[str, dict[str, str]] = {}
    for field, vocab in VOCAB_FIELDS.items():
        # Vocabulary terms always match themselves ("skin coloured" -> skin_coloured).
        table = {term_key(term): term for term in vocab}
        for term, variants in (fields.get(field) or {}).items():
            term = str(term)
            if term not in vocab:
                raise SynonymError(f"{path}: {field}: {term!r} is not a vocabulary term")
            for variant in variants or ():
                if not isinstance(variant, str):  # YAML turns bare yes/no/1 into bool/int
                    raise SynonymError(f"{path}: {field}.{term}: quote {variant!r} as a string")
                key = term_key(variant)
                if table.get(key, term) != term:
                    raise SynonymError(
                        f"{path}: {field}: {variant!r} maps to both {table[key]!r} and {term!r}"
                    )
                table[key] = term
        lookup[field] = table
    return SynonymTable(version=data["version"], lookup=lookup)


@lru_cache(maxsize=1)
def default_synonyms() -> SynonymTable:
    return load_synonyms()


def synonyms_version() -> str:
    return default_synonyms().version


def normalise_term(field: str, text: Any, table: SynonymTable | None = None) -> str | None:
    """Vocabulary term for ``text`` in ``field``, or None if it is not recognised."""
    return (table or default_synonyms()).term(field, text)


def normalise_caption_dict(
    d: Mapping[str, Any], table: SynonymTable | None = None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Map every vocabulary field of a caption-like dict onto the closed vocabulary.

    Returns the new dict and the ``(field, raw)`` terms that matched nothing. Unknown terms and values
    of the wrong type are kept as they were, so validation still fails on them and says why. Set
    fields are de-duplicated after mapping ("red" and "erythematous" are one colour).
    """
    table = table or default_synonyms()
    out = dict(d)
    unknown: list[tuple[str, str]] = []
    for field, value in d.items():
        if field in SCALAR_FIELDS and isinstance(value, str):
            term = table.term(field, value)
            if term is None:
                unknown.append((field, value))
            else:
                out[field] = term
        elif field in SET_FIELDS and isinstance(value, list | tuple):
            mapped: list[Any] = []
            for item in value:
                term = table.term(field, item) if isinstance(item, str) else None
                if isinstance(item, str) and term is None:
                    unknown.append((field, item))
                new = item if term is None else term
                if not isinstance(new, str) or new not in mapped:
                    mapped.append(new)
            out[field] = mapped
    return out, unknown
