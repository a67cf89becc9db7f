from __future__ import annotations

import base64
import json
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from skinflow import vocab
from skinflow.captions.captioners import (
    Captioner,
    CaptionerConfig,
    CaptionerError,
    CaptionRequest,
    LocalVLMCaptioner,
    OpenAICompatibleCaptioner,
    OracleCaptioner,
    caption_prompt,
    make_captioner,
    retry_after_seconds,
)
from skinflow.captions.parser import parse_caption, render_caption
from skinflow.captions.schema import Caption

ROW = {
    "image_quality": "good", "body_site": "arm", "primary_morphology": ["plaque"], "secondary_features": ["scale"],
    "colour": ["erythematous"], "border_definition": "well_defined", "border_regularity": "regular",
    "configuration": ["oval"], "lesion_count": "single", "distribution": "localised", "size_class": "10_to_30mm",
    "fitzpatrick_type": "III",
}
CANONICAL = render_caption(Caption.from_attributes(ROW))
# What a chat model typically returns: fenced, with a synonym. Must come back canonical.
MODEL_TEXT = "```json\n" + CANONICAL.replace('"erythematous"', '"red"') + "\n```"


# ---- prompt and oracle -------------------------------------------------------------------------------------


def test_prompt_lists_every_vocabulary_term_and_a_valid_example():
    prompt = caption_prompt()
    assert prompt == caption_prompt()
    for field, terms in {**vocab.SCALAR_FIELDS, **vocab.SET_FIELDS}.items():
        line = next(l for l in prompt.splitlines() if l.startswith(field))
        assert line.split(": ", 1)[1].split("|") == list(terms)
    example = prompt.splitlines()[-1]
    assert parse_caption(example, synonyms=False).ok


def test_oracle_captioner(attrs_row):
    oracle = OracleCaptioner()
    assert isinstance(oracle, Captioner)
    ok, missing, bad = oracle.caption([
        CaptionRequest("a", None, attrs_row), CaptionRequest("b"),
        CaptionRequest("c", None, {**attrs_row, "colour": ["mauve"]}),
    ])
    assert ok.status == "ok" and ok.caption_json == render_caption(Caption.from_attributes(attrs_row))
    assert (missing.status, missing.error_code) == ("failed", "NO_ATTRIBUTES")
    assert (bad.status, bad.error_code) == ("failed", "INVALID_ATTRIBUTES") and "mauve" in bad.error_message


# ---- local VLM: retry/parse logic with an injected generate function ---------------------------------------


class FakeGenerate:
    def __init__(self, outputs):
        self.outputs, self.calls = list(outputs), []

    def __call__(self, image, prompt, **kwargs):
        self.calls.append(kwargs)
        out = self.outputs.pop(0)
        if isinstance(out, Exception):
            raise out
        return out


def test_local_vlm_retries_with_sampling_until_parse_succeeds(image_file):
    fake = FakeGenerate(["Sorry, I cannot.", '{"colour": ["red"', MODEL_TEXT])
    captioner = LocalVLMCaptioner("unused", max_retries=2, generate_fn=fake)
    [outcome] = captioner.caption([CaptionRequest("img1", image_file)])
    assert (outcome.status, outcome.attempts, outcome.caption_json) == ("ok", 3, CANONICAL)
    assert [c["do_sample"] for c in fake.calls] == [False, True, True]  # greedy first, then sample
    seeds = [c["seed"] for c in fake.calls]
    assert len(set(seeds)) == 3
    again = FakeGenerate(["x", "y", MODEL_TEXT])
    LocalVLMCaptioner("unused", max_retries=2, generate_fn=again).caption([CaptionRequest("img1", image_file)])
    assert [c["seed"] for c in again.calls] == seeds  # reproducible sampling


def test_local_vlm_bounded_retries_and_failures(image_file, tmp_path):
    fake = FakeGenerate(["nope", '{"a":', "[]"])
    [outcome] = LocalVLMCaptioner("unused", max_retries=2, generate_fn=fake).caption([CaptionRequest("i", image_file)])
    assert (outcome.status, outcome.attempts, outcome.error_code, outcome.raw_output) == ("failed", 3, "NOT_OBJECT", "[]")
    assert len(fake.calls) == 3
    boom = FakeGenerate([RuntimeError("CUDA out of memory")])
    [outcome] = LocalVLMCaptioner("unused", generate_fn=boom).caption([CaptionRequest("i", image_file)])
    assert (outcome.error_code, outcome.attempts) == ("GENERATION_ERROR", 1)
    [outcome] = LocalVLMCaptioner("unused", generate_fn=FakeGenerate([])).caption(
        [CaptionRequest("i", tmp_path / "missing.png")])
    assert (outcome.status, outcome.error_code, outcome.attempts) == ("failed", "IMAGE_ERROR", 0)


# ---- local VLM: a real (tiny, random) HF Llava model built on the fly -----------------------------------------


def _tiny_llava(path, first_token: str, silence: bool):
    """Char-level tiny Llava saved to ``path``. With ``silence`` every logit is 0, so greedy decoding
    always picks token 0, which is ``first_token`` (a whole caption as one vocabulary entry)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    specials = [first_token, "<pad>", "<s>", "</s>", "<unk>", "<image>"]
    vocab_ = {t: i for i, t in enumerate(specials + [chr(i) for i in range(32, 127)])}
    tk = Tokenizer(models.WordLevel(vocab_, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", chat_template=template,
        image_token="<image>", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        text_config=LlamaConfig(vocab_size=len(vocab_), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                                pad_token_id=1, bos_token_id=2, eos_token_id=3),
        image_token_index=5, vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    if silence:
        with torch.no_grad():
            model.model.language_model.norm.weight.zero_()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_local_vlm_with_a_real_tiny_hf_model(tmp_path, image_file):
    pytest.importorskip("transformers")
    good = _tiny_llava(tmp_path / "good", MODEL_TEXT, silence=True)
    noisy = _tiny_llava(tmp_path / "noisy", "<unused>", silence=False)
    requests = [CaptionRequest("a", image_file)]
    [ok] = LocalVLMCaptioner(good, max_new_tokens=2, max_retries=1).caption(requests)
    assert (ok.status, ok.attempts, ok.caption_json) == ("ok", 1, CANONICAL)
    captioner = LocalVLMCaptioner(noisy, max_new_tokens=8, max_retries=1)
    assert captioner.version.startswith("noisy:") and captioner.version.endswith(":caption-prompt/1")
    [failed] = captioner.caption(requests)  # random weights emit character soup, greedy then sampled
    assert (failed.status, failed.attempts) == ("failed", 2)
    assert failed.error_code in {"NOT_JSON", "TRUNCATED", "NOT_OBJECT", "EMPTY"}


# ---- OpenAI-compatible captioner against a real HTTP server -------------------------------------------------

# Scenario -> response steps; the n-th request to a scenario gets step n (the last step repeats).
SCRIPTS = {
    "ok": ["ok"], "slow": ["sleep"], "slow-once": ["sleep", "ok"], "500": [500], "500-once": [500, "ok"],
    "429-once": [429, "ok"], "garbage": ["garbage"], "401": [401], "badcaption-once": ["badcaption", "ok"],
    "concurrent": ["slowok"],
}


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # sleeping handlers must not delay shutdown

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.seen: dict[str, list] = defaultdict(list)
        self.inflight = self.max_inflight = 0


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        scenario = self.path.split("/")[1]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            seen = self.server.seen[scenario]
            seen.append((dict(self.headers), body))
            steps = SCRIPTS[scenario]
            step = steps[min(len(seen), len(steps)) - 1]
            self.server.inflight += 1
            self.server.max_inflight = max(self.server.max_inflight, self.server.inflight)
        try:
            self._respond(step)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left
        finally:
            with self.server.lock:
                self.server.inflight -= 1

    def _respond(self, step):
        if step in ("sleep", "slowok"):
            time.sleep(0.8 if step == "sleep" else 0.15)
        if step in (500, 401):
            return self._send(step, b"server says no")
        if step == 429:
            return self._send(429, b"slow down", {"Retry-After": "1"})
        if step == "garbage":
            return self._send(200, b"<html>502 Bad Gateway</html>")
        content = "It looks like a red plaque." if step == "badcaption" else MODEL_TEXT
        completion = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        self._send(200, json.dumps(completion).encode())

    def _send(self, status, payload, headers=None):
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("SKINFLOW_TEST_KEY", "sk-test-123")
    srv = FakeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _client(srv, scenario, **kwargs):
    delays: list[float] = []
    params = dict(api_key_env="SKINFLOW_TEST_KEY", timeout_s=0.3, max_retries=2, backoff_s=0.01,
                  concurrency=2, sleep=delays.append)
    client = OpenAICompatibleCaptioner(f"http://127.0.0.1:{srv.server_port}/{scenario}", "tiny-vlm", **{**params, **kwargs})
    return client, delays


def test_http_success_sends_image_and_key_from_env(server, image_file):
    client, delays = _client(server, "ok")
    [outcome] = client.caption([CaptionRequest("img", image_file)])
    assert (outcome.status, outcome.attempts, outcome.caption_json) == ("ok", 1, CANONICAL)
    [(headers, body)] = server.seen["ok"]
    assert headers["Authorization"] == "Bearer sk-test-123"
    assert body["model"] == "tiny-vlm" and body["temperature"] == 0.0
    text_part, image_part = body["messages"][0]["content"]
    assert text_part["text"] == caption_prompt()
    prefix, data = image_part["image_url"]["url"].split(",", 1)
    assert prefix == "data:image/png;base64" and base64.b64decode(data) == image_file.read_bytes()
    assert delays == []


def test_http_timeout_then_success(server, image_file):
    client, delays = _client(server, "slow-once")
    start = time.perf_counter()
    [outcome] = client.caption([CaptionRequest("img", image_file)])
    assert (outcome.status, outcome.attempts) == ("ok", 2)
    assert delays == [0.01] and time.perf_counter() - start < 0.75  # gave up on the sleeper


def test_http_timeouts_exhaust_retries(server, image_file):
    client, delays = _client(server, "slow", max_retries=1)
    [outcome] = client.caption([CaptionRequest("img", image_file)])
    assert (outcome.status, outcome.error_code, outcome.attempts) == ("failed", "TIMEOUT", 2)


def test_http_500_then_success(server, image_file):
    client, delays = _client(server, "500-once")
    [outcome] = client.caption([CaptionRequest("img", image_file)])
    assert (outcome.status, outcome.attempts, delays) == ("ok", 2, [0.01])


def test_http_429_honours_retry_after(server, image_file):
    client, delays = _client(server, "429-once")
    [outcome] = client.caption([CaptionRequest("img", image_file)])
    assert (outcome.status, outcome.attempts) == ("ok", 2)
    assert delays == [1.0]  # the server's Retry-After, not the 0.01 s backoff


def test_http_garbage_body_fails_without_retry(server, image_file):
    client, _ = _client(server, "garbage")
    [outcome] = client.caption([CaptionRequest("img", image_file)])
    assert (outcome.status, outcome.error_code, outcome.attempts) == ("failed", "BAD_RESPONSE", 1)
    assert "Bad Gateway" in outcome.raw_output and len(server.seen["garbage"]) == 1


def test_http_bounded_retries_exhausted(server, image_file):
    client, delays = _client(server, "500")
    [outcome] = client.caption([CaptionRequest("img", image_file)])
    assert (outcome.status, outcome.error_code, outcome.attempts) == ("failed", "SERVER_ERROR", 3)
    assert len(server.seen["500"]) == 3 and delays == [0.01, 0.02]  # exponential backoff


def test_http_client_error_is_not_retried(server, image_file):
    client, _ = _client(server, "401")
    [outcome] = client.caption([CaptionRequest("img", image_file)])
    assert (outcome.error_code, outcome.attempts, len(server.seen["401"])) == ("HTTP_ERROR", 1, 1)


def test_http_unparsable_caption_is_resampled(server, image_file):
    client, delays = _client(server, "badcaption-once")
    [outcome] = client.caption([CaptionRequest("img", image_file)])
    assert (outcome.status, outcome.attempts) == ("ok", 2)
    assert [body["temperature"] for _, body in server.seen["badcaption-once"]] == [0.0, 0.7]


def test_http_concurrency_limit_and_order(server, image_file):
    client, _ = _client(server, "concurrent", concurrency=2)
    outcomes = client.caption([CaptionRequest(f"img{i}", image_file) for i in range(6)])
    assert [o.image_id for o in outcomes] == [f"img{i}" for i in range(6)]
    assert all(o.status == "ok" for o in outcomes)
    assert server.max_inflight == 2


def test_http_missing_key_and_unreachable_server(monkeypatch, image_file):
    monkeypatch.delenv("SKINFLOW_TEST_KEY", raising=False)
    client = OpenAICompatibleCaptioner("http://127.0.0.1:9", "m", api_key_env="SKINFLOW_TEST_KEY")
    with pytest.raises(CaptionerError, match="SKINFLOW_TEST_KEY"):
        client.caption([CaptionRequest("img", image_file)])
    delays: list[float] = []
    client = OpenAICompatibleCaptioner("http://127.0.0.1:9", "m", api_key_env=None, timeout_s=0.3,
                                       max_retries=1, backoff_s=0.01, sleep=delays.append)
    [outcome] = client.caption([CaptionRequest("img", image_file)])
    assert (outcome.error_code, outcome.attempts) == ("CONNECTION_ERROR", 2)


def test_retry_after_parsing():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=5), usegmt=True), now) == 5.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=5), usegmt=True), now) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


# ---- configuration ----------------------------------------------------------------------------------------


def test_make_captioner_from_config():
    assert isinstance(make_captioner(CaptionerConfig(kind="oracle")), OracleCaptioner)
    cfg = CaptionerConfig.model_validate({"kind": "openai-compatible", "openai_compatible": {
        "base_url": "http://h/v1/", "model": "m", "concurrency": 3, "timeout_s": 5}})
    client = make_captioner(cfg)
    assert isinstance(client, OpenAICompatibleCaptioner)
    assert (client.url, client.concurrency, client.timeout_s) == ("http://h/v1/chat/completions", 3, 5)
    local = make_captioner(CaptionerConfig(kind="local-vlm", local_vlm={"model_dir": "/models/x", "device": "cuda"}))
    assert isinstance(local, LocalVLMCaptioner) and local.device == "cuda"


@pytest.mark.parametrize("data", [
    {"kind": "local-vlm"},  # settings for the chosen kind are required
    {"kind": "openai-compatible", "openai_compatible": {"base_url": "u", "model": "m", "api_key": "sk-x"}},
    {"kind": "openai-compatible", "openai_compatible": {"base_url": "u", "model": "m", "concurrency": 0}},
    {"kind": "gpt"},
])
def test_invalid_captioner_config(data):
    with pytest.raises(ValidationError):
        CaptionerConfig.model_validate(data)
