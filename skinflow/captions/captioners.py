"""Captioners: turn images (and, for the oracle, ground-truth attributes) into schema captions.

All captioners share one interface and one outcome type, so the captioning stage can swap the
SkinSynth oracle, a local HF VLM, an OpenAI-compatible server and a captions table
(``table_captions.py``) through ``params.yaml`` alone.
Per-image problems become ``failed`` outcomes with an error code (never exceptions), so one bad
image cannot kill a long run; configuration problems (missing API key) do raise.

Successful outcomes always store ``render_caption`` of the parsed caption, i.e. the canonical form,
whatever wrapping or synonyms the model used.
"""

from __future__ import annotations

import base64
import email.utils
import enum
import hashlib
import http.client
import json
import mimetypes
import os
import socket
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol, runtime_checkable

from pydantic import Field, ValidationError, field_validator, model_validator

from skinflow.captions.parser import parse_caption, render_caption
from skinflow.captions.schema import SUMMARY_MAX_CHARS, Caption
from skinflow.vocab import SCALAR_FIELDS, SCHEMA_VERSION, SET_FIELDS
from skinflow.config import Section

PROMPT_VERSION = "caption-prompt/1"
_RAW_KEEP = 2000  # characters of raw model output kept on an outcome for debugging


class FailureCode(str, enum.Enum):
    """Captioner-level failures; parse failures use ``ParseErrorCode`` values instead."""

    NO_ATTRIBUTES = "NO_ATTRIBUTES"
    INVALID_ATTRIBUTES = "INVALID_ATTRIBUTES"
    IMAGE_ERROR = "IMAGE_ERROR"
    GENERATION_ERROR = "GENERATION_ERROR"
    TIMEOUT = "TIMEOUT"
    CONNECTION_ERROR = "CONNECTION_ERROR"
    RATE_LIMITED = "RATE_LIMITED"
    SERVER_ERROR = "SERVER_ERROR"  # HTTP 5xx
    HTTP_ERROR = "HTTP_ERROR"  # other non-2xx: not retried
    BAD_RESPONSE = "BAD_RESPONSE"  # 2xx whose body is not a chat completion
    NOT_IN_TABLE = "NOT_IN_TABLE"  # table: no row for the image id
    EMPTY_TEXT = "EMPTY_TEXT"  # table: the row's caption is blank
    MISSING_FIELDS = "MISSING_FIELDS"  # table: required fields neither stated by the text nor defaulted

    def __str__(self) -> str:
        return self.value


class CaptionerError(RuntimeError):
    """A captioner is misconfigured (not a per-image failure)."""


@dataclass(frozen=True)
class CaptionRequest:
    image_id: str
    image_path: str | Path | None = None
    attributes: Mapping[str, Any] | None = None  # SkinSynth ground-truth row (oracle only)


@dataclass(frozen=True)
class CaptionOutcome:
    image_id: str
    status: Literal["ok", "failed"]
    caption_json: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    raw_output: str | None = None  # last raw model text, truncated

    @classmethod
    def failed(cls, image_id: str, code: Any, message: str, attempts: int, raw: str | None = None) -> CaptionOutcome:
        raw = None if raw is None else raw[:_RAW_KEEP]
        return cls(image_id, "failed", None, str(code), message[:500], attempts, raw)


@runtime_checkable
class Captioner(Protocol):
    name: str
    version: str

    def caption(self, items: list[CaptionRequest]) -> list[CaptionOutcome]: ...


# ---- prompt ----------------------------------------------------------------------------------------

_EXAMPLE_ROW = {
    "image_quality": "good", "body_site": "arm", "primary_morphology": ["plaque"],
    "secondary_features": ["scale"], "colour": ["erythematous"], "border_definition": "well_defined",
    "border_regularity": "regular", "configuration": ["oval"], "lesion_count": "single",
    "distribution": "localised", "size_class": "10_to_30mm", "fitzpatrick_type": "III",
}


def caption_prompt() -> str:
    """Instruction listing every field with its closed vocabulary, plus one rendered example."""
    lines = [
        "Describe the skin image as ONE JSON object and output nothing else.",
        "Use only the listed terms. Fields marked [list] take a JSON array of one or more terms.",
    ]
    lines += [f"{field}: {'|'.join(terms)}" for field, terms in SCALAR_FIELDS.items()]
    lines += [f"{field} [list]: {'|'.join(terms)}" for field, terms in SET_FIELDS.items()]
    lines += [
        f"summary: one descriptive sentence, at most {SUMMARY_MAX_CHARS} characters, naming no diagnosis.",
        f'schema_version: "{SCHEMA_VERSION}"',
        "Example:",
        render_caption(Caption.from_attributes(_EXAMPLE_ROW)),
    ]
    return "\n".join(lines)


def _stable_seed(seed: int, image_id: str, attempt: int) -> int:
    # Python's hash() is salted per process; crc32 makes sampling reproducible across runs.
    return zlib.crc32(f"{seed}:{image_id}:{attempt}".encode()) & 0x7FFFFFFF


# ---- oracle ----------------------------------------------------------------------------------------


class OracleCaptioner:
    """Ground-truth captions from SkinSynth attributes (the upper bound, and Stage I targets)."""

    name = "oracle"
    version = f"oracle:{SCHEMA_VERSION}"

    def caption(self, items: list[CaptionRequest]) -> list[CaptionOutcome]:
        return [self._one(item) for item in items]

    def _one(self, item: CaptionRequest) -> CaptionOutcome:
        if item.attributes is None:
            return CaptionOutcome.failed(item.image_id, FailureCode.NO_ATTRIBUTES, "request has no attributes row", 1)
        try:
            caption = Caption.from_attributes(item.attributes)
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            return CaptionOutcome.failed(item.image_id, FailureCode.INVALID_ATTRIBUTES, f"{type(exc).__name__}: {exc}", 1)
        return CaptionOutcome(item.image_id, "ok", render_caption(caption), attempts=1)


# ---- local HF VLM ------------------------------------------------------------------------------------

# (image, prompt, do_sample, temperature, max_new_tokens, seed) -> generated text
GenerateFn = Callable[..., str]


class LocalVLMCaptioner:
    """Any local HF image-text-to-text model directory; loaded lazily, never from the hub.

    Attempt 0 decodes greedily; retries sample at ``temperature`` with a seed derived from
    (seed, image_id, attempt), so reruns reproduce. ``generate_fn`` replaces the HF model (tests,
    or an external inference engine) and receives the same arguments.
    """

    name = "local-vlm"

    def __init__(
        self,
        model_dir: str | Path,
        max_new_tokens: int = 512,
        max_retries: int = 2,
        device: str = "cpu",
        *,
        temperature: float = 0.7,
        seed: int = 0,
        generate_fn: GenerateFn | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.max_new_tokens = max_new_tokens
        self.max_retries = max_retries
        self.device = device
        self.temperature = temperature
        self.seed = seed
        self._generate = generate_fn or self._hf_generate
        self._model: Any = None
        self._processor: Any = None
        config = self.model_dir / "config.json"
        digest = hashlib.md5(config.read_bytes(), usedforsecurity=False).hexdigest()[:8] if config.exists() else "noconfig"
        self.version = f"{self.model_dir.name}:{digest}:{PROMPT_VERSION}"

    def caption(self, items: list[CaptionRequest]) -> list[CaptionOutcome]:
        prompt = caption_prompt()
        return [self._one(item, prompt) for item in items]

    def _one(self, item: CaptionRequest, prompt: str) -> CaptionOutcome:
        try:
            from PIL import Image

            with Image.open(item.image_path) as img:  # type: ignore[arg-type]
                image = img.convert("RGB")
        except Exception as exc:  # noqa: BLE001 - any unreadable image is a per-item failure
            return CaptionOutcome.failed(item.image_id, FailureCode.IMAGE_ERROR, f"{type(exc).__name__}: {exc}", 0)
        raw, code, message = None, "", ""
        for attempt in range(self.max_retries + 1):
            try:
                raw = self._generate(
                    image, prompt, do_sample=attempt > 0, temperature=self.temperature,
                    max_new_tokens=self.max_new_tokens, seed=_stable_seed(self.seed, item.image_id, attempt),
                )
            except Exception as exc:  # noqa: BLE001 - e.g. OOM on one huge image; not retried
                return CaptionOutcome.failed(item.image_id, FailureCode.GENERATION_ERROR, f"{type(exc).__name__}: {exc}", attempt + 1)
            result = parse_caption(raw)
            if result.ok:
                return CaptionOutcome(item.image_id, "ok", render_caption(result.caption), attempts=attempt + 1)  # type: ignore[arg-type]
            assert result.error is not None
            code, message = str(result.error.code), result.error.message
        return CaptionOutcome.failed(item.image_id, code, message, self.max_retries + 1, raw)

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self._processor = AutoProcessor.from_pretrained(self.model_dir, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(self.model_dir, local_files_only=True, dtype="auto")
        self._model = model.to(self.device).eval()

    def _hf_generate(self, image: Any, prompt: str, *, do_sample: bool, temperature: float,
                     max_new_tokens: int, seed: int) -> str:
        import torch

        self._load()
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self._processor(text=[text], images=[image], return_tensors="pt").to(self.device)
        sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self._model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return self._processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


# ---- OpenAI-compatible HTTP server ---------------------------------------------------------------------


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Parse a Retry-After header: delta-seconds (fractions tolerated) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


class OpenAICompatibleCaptioner:
    """POSTs ``{base_url}/chat/completions`` with the image as a base64 data URL.

    Timeouts, connection errors, 5xx and 429 are retried with exponential backoff (Retry-After wins
    when the server sends it, capped at ``max_backoff_s``); other 4xx and garbage bodies fail at once.
    A parsable response whose caption fails to parse is re-requested at ``retry_temperature``.
    The API key is read only from the environment variable named by ``api_key_env``.
    """

    name = "openai-compatible"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        concurrency: int = 4,
        *,
        max_backoff_s: float = 30.0,
        max_tokens: int = 512,
        temperature: float = 0.0,
        retry_temperature: float = 0.7,
        seed: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.concurrency = max(1, concurrency)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.retry_temperature = retry_temperature
        self.seed = seed
        self._sleep = sleep
        self.version = f"{model}:{PROMPT_VERSION}"

    def caption(self, items: list[CaptionRequest]) -> list[CaptionOutcome]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise CaptionerError(f"environment variable {self.api_key_env} (api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        prompt = caption_prompt()
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(lambda item: self._one(item, prompt, headers), items))

    def _one(self, item: CaptionRequest, prompt: str, headers: dict[str, str]) -> CaptionOutcome:
        try:
            data = Path(item.image_path).read_bytes()  # type: ignore[arg-type]
        except (OSError, TypeError) as exc:
            return CaptionOutcome.failed(item.image_id, FailureCode.IMAGE_ERROR, f"{type(exc).__name__}: {exc}", 0)
        mime = mimetypes.guess_type(str(item.image_path))[0] or "image/png"
        image_url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        raw: str | None = None
        code: Any = FailureCode.CONNECTION_ERROR
        message, delay, resample = "", 0.0, False
        for attempt in range(self.max_retries + 1):
            if attempt and delay > 0:
                self._sleep(delay)
            body = {
                "model": self.model,
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": prompt},
                    {"type": "image_url", "image_url": {"url": image_url}},
                ]}],
                "max_tokens": self.max_tokens,
                # After an unparsable caption, greedy decoding would just repeat it: sample instead.
                "temperature": self.retry_temperature if resample else self.temperature,
                "seed": _stable_seed(self.seed, item.image_id, attempt),
            }
            status, retry_after, payload, code, message = self._post(json.dumps(body).encode(), headers)
            if code == FailureCode.HTTP_ERROR:  # 4xx other than 429: retrying cannot help
                return CaptionOutcome.failed(item.image_id, code, message, attempt + 1)
            if code is not None:  # timeout, connection error, 429, 5xx
                backoff = self.backoff_s * 2**attempt
                delay = min(self.max_backoff_s, backoff if retry_after is None else retry_after)
                continue
            raw = _completion_text(payload)
            if raw is None:  # a broken server/proxy; retrying garbage wastes the budget
                return CaptionOutcome.failed(item.image_id, FailureCode.BAD_RESPONSE,
                                             f"HTTP {status}: body is not a chat completion", attempt + 1,
                                             payload.decode("utf-8", "replace"))
            result = parse_caption(raw)
            if result.ok:
                return CaptionOutcome(item.image_id, "ok", render_caption(result.caption), attempts=attempt + 1)  # type: ignore[arg-type]
            assert result.error is not None
            code, message, delay, resample = result.error.code, result.error.message, 0.0, True
        return CaptionOutcome.failed(item.image_id, code, message, self.max_retries + 1, raw)

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, float | None, bytes, Any, str]:
        """One request -> (status, retry_after, body, failure code or None, message)."""
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, None, response.read(), None, ""
        except urllib.error.HTTPError as exc:
            retry_after = retry_after_seconds(exc.headers.get("Retry-After") if exc.headers else None)
            detail = f"HTTP {exc.code} from {self.url}"
            if exc.code == 429:
                return exc.code, retry_after, b"", FailureCode.RATE_LIMITED, detail
            if exc.code >= 500:
                return exc.code, retry_after, b"", FailureCode.SERVER_ERROR, detail
            return exc.code, None, b"", FailureCode.HTTP_ERROR, detail
        except (TimeoutError, socket.timeout) as exc:
            return 0, None, b"", FailureCode.TIMEOUT, f"no response within {self.timeout_s}s ({exc})"
        except urllib.error.URLError as exc:
            timed_out = isinstance(exc.reason, TimeoutError | socket.timeout)
            code = FailureCode.TIMEOUT if timed_out else FailureCode.CONNECTION_ERROR
            return 0, None, b"", code, f"{self.url}: {exc.reason}"
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            return 0, None, b"", FailureCode.CONNECTION_ERROR, f"{type(exc).__name__}: {exc}"


def _completion_text(payload: bytes) -> str | None:
    """``choices[0].message.content`` as text (string or list of text parts), else None."""
    try:
        content = json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        return None
    if isinstance(content, list):  # some servers return content parts
        parts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        content = "".join(parts) if parts else None
    return content if isinstance(content, str) else None


# ---- configuration ---------------------------------------------------------------------------------------


class LocalVLMSettings(Section):
    model_dir: str
    max_new_tokens: int = Field(512, ge=1)
    max_retries: int = Field(2, ge=0, le=10)
    device: str = "cpu"
    temperature: float = Field(0.7, gt=0)  # used on retries only; attempt 0 is greedy
    seed: int = 0


class OpenAICompatibleSettings(Section):
    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"  # the key itself never goes in params
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    backoff_s: float = Field(1.0, ge=0)
    max_backoff_s: float = Field(30.0, ge=0)
    concurrency: int = Field(4, ge=1, le=64)
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0)
    retry_temperature: float = Field(0.7, ge=0)
    seed: int = 0


class TableSettings(Section):
    path: str = Field(min_length=1)  # .csv with a header, or .jsonl
    id_column: str = Field("image_id", min_length=1)
    text_column: str = Field("caption", min_length=1)
    # Fields the texts do not state; an assumption about the dataset, reported as "defaulted" per field.
    defaults: dict[str, str | list[str]] = {"body_site": "unknown", "fitzpatrick_type": "unknown"}

    @field_validator("defaults")
    @classmethod
    def _vocabulary_terms(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        from skinflow.captions.table_captions import check_defaults  # lazy: that module imports this one

        check_defaults(value)
        return value


class CaptionerConfig(Section):
    kind: Literal["oracle", "local-vlm", "openai-compatible", "table", "none"]
    local_vlm: LocalVLMSettings | None = None
    openai_compatible: OpenAICompatibleSettings | None = None
    table: TableSettings | None = None

    @model_validator(mode="after")
    def _settings_for_kind(self) -> CaptionerConfig:
        needed = {"local-vlm": "local_vlm", "openai-compatible": "openai_compatible", "table": "table"}.get(self.kind)
        if needed and getattr(self, needed) is None:
            raise ValueError(f"kind={self.kind!r} needs a '{needed}' section")
        return self


def make_captioner(cfg: CaptionerConfig) -> Captioner:
    if cfg.kind == "oracle":
        return OracleCaptioner()
    if cfg.kind == "none":
        raise CaptionerError("captioner kind 'none' makes no captions; the caption stage handles it")
    if cfg.kind == "table":
        from skinflow.captions.table_captions import TableCaptioner  # lazy: that module imports this one

        assert cfg.table is not None
        return TableCaptioner(**cfg.table.model_dump())
    if cfg.kind == "local-vlm":
        assert cfg.local_vlm is not None
        return LocalVLMCaptioner(**cfg.local_vlm.model_dump())
    assert cfg.openai_compatible is not None
    return OpenAICompatibleCaptioner(**cfg.openai_compatible.model_dump())
