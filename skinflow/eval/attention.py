"""Where a model looks when it answers: answer-to-image relevance maps per model variant.

For each image the model gets the diagnosis prompt, answers greedily, and then prompt + its own
answer go through one more forward pass. Two relevance measures per merged image token:

* ``attention`` (default). Eager attention weights of every text decoder layer, taken at the query
  positions that produced the answer tokens (position ``p - 1`` predicts token ``p``, so the first
  query is the last prompt token and the end-of-answer token counts) and at the image-token keys,
  then averaged over heads, layers and those queries. A plain mean rather than attention rollout:
  rollout through the residual stream is dominated by the identity on shallow models and by sink
  tokens on deep ones, and the mean is the summary that compares across variants without tuning.
  Much of every row goes to sink tokens (the first token, ``<|vision_start|>``), so the map is
  renormalised over image tokens; the raw share of attention that reaches the image is reported
  separately (``image_attention``). Weights are reduced inside forward hooks on the attention
  modules, one layer at a time, so memory holds one layer's ``heads x L x L`` tensor, never all
  layers' (what ``output_attentions=True`` would collect).
* ``gradxinput``. ``|sum_d x_d * dlogp/dx_d|`` at each image-token embedding, ``logp`` the answer's
  log-likelihood: for kernels that never materialise attention weights, or as a cross-check.

Token layout (transformers 5.23 Qwen2.5-VL): the processor expands each image to
``t*h*w / merge_size**2`` ``<|image_pad|>`` tokens (``processor.image_token_id``; its
``mm_token_type_ids`` mark them 1), in row-major order over the merged grid
``(h / merge_size, w / merge_size)`` of ``image_grid_thw``; the vision tower undoes its window
reordering before the merger. The grid covers the whole (resized, uncropped) image, so merged cell
``(i, j)`` is rows ``i*H/gh .. (i+1)*H/gh`` and columns ``j*W/gw ..`` of the original image.

Numbers per (image, variant): the normalised entropy ``H(p) / log(n_tokens)`` of the map (1 =
uniform, "diffuse"; 0 = one token, "focused"), and where the lesion geometry is known (SkinSynth's
``attributes.parquet``: main-lesion centre and radius in image pixels), the map's share inside the
lesion disc (radius x ``lesion_margin``) next to the disc's area fraction, the share a uniform map
would get. Real datasets without masks get no lesion share (reported as unavailable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from skinflow.config import Section


AGGREGATION = {
    "attention": "eager text-decoder attention from the queries that produced the answer tokens to "
                 "the image tokens, mean over layers, heads and queries, renormalised over image tokens",
    "gradxinput": "|x . d log p(answer) / dx| at each image-token embedding, normalised to sum 1",
}


class AttentionConfig(Section):
    split: str = "test"
    n_images: int = Field(6, ge=1)                 # the first n image_ids of the split, sorted
    method: Literal["attention", "gradxinput"] = "gradxinput"
    max_new_tokens: int = Field(64, ge=1)
    attributes: str | None = "data/skinsynth/attributes.parquet"  # lesion geometry; None = none
    lesion_margin: float = Field(1.25, gt=0)       # disc radius / rendered main-lesion radius
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cell_px: int = Field(160, ge=48, le=512)       # side of one image cell in the PNG grid
    # Two variants' maps "differ" when the mean total-variation distance between their maps of the same
    # images exceeds this (0 = identical maps, 1 = disjoint support).
    separation_threshold: float = Field(0.05, gt=0, lt=1)


# ---- maps and numbers (pure, numpy) ----------------------------------------------------------------


def normalised_entropy(weights: Sequence[float] | np.ndarray) -> float:
    """Shannon entropy of ``weights / sum`` divided by ``log(n)``: 1 uniform, 0 one-hot."""
    w = np.asarray(weights, dtype=float).ravel()
    if w.size == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    if w.size == 1:
        return 0.0
    p = w / w.sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(w.size))


def merged_grid(image_grid_thw: Sequence[int], merge_size: int) -> tuple[int, int]:
    """``(rows, cols)`` of merged image tokens for one image's ``(t, h, w)`` patch grid."""
    t, h, w = (int(v) for v in image_grid_thw)
    if t != 1:
        raise ValueError(f"one still image expected, got temporal grid {t}")
    if h % merge_size or w % merge_size:
        raise ValueError(f"patch grid {h}x{w} not divisible by merge size {merge_size}")
    return h // merge_size, w // merge_size


def image_token_positions(input_ids: Sequence[int] | np.ndarray, image_token_id: int,
                          grid: tuple[int, int]) -> np.ndarray:
    """Sequence positions of one image's tokens, checked against its merged grid."""
    positions = np.flatnonzero(np.asarray(input_ids) == image_token_id)
    if len(positions) != grid[0] * grid[1]:
        raise ValueError(f"{len(positions)} image tokens for a {grid[0]}x{grid[1]} merged grid")
    return positions


def reduce_attention(layer_weights: Iterable[np.ndarray | torch.Tensor], queries: slice,
                     image_positions: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean attention from ``queries`` to each image key over layers and heads.

    ``layer_weights``: per layer ``(heads, L, L)`` or ``(1, heads, L, L)``. Returns the per-image-
    token mean (not renormalised) and the mean total attention the queries give the image.
    """
    keys = torch.as_tensor(image_positions)
    per_token = _mean_over_layers([_layer_part(torch.as_tensor(w), queries, keys) for w in layer_weights])
    return per_token, float(per_token.sum())


def _layer_part(weights: torch.Tensor, queries: slice, keys: torch.Tensor) -> torch.Tensor:
    """One layer: mean over heads and queries of the attention to each image key."""
    w = weights[0] if weights.dim() == 4 else weights          # (heads, L, L)
    rows = w[:, queries].float()                                # (heads, queries, L)
    return rows[:, :, keys.to(rows.device)].mean(dim=(0, 1)).cpu()


def _mean_over_layers(parts: list[torch.Tensor]) -> np.ndarray:
    if not parts:
        raise ValueError("no attention layers")
    return torch.stack(parts).mean(dim=0).numpy().astype(float)


def back_project(grid_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Spread each merged cell's weight evenly over its pixels: an ``(H, W)`` density whose sum is
    the map's sum, so any pixel mask's share of the map is ``density[mask].sum() / density.sum()``."""
    gh, gw = grid_map.shape
    rows = np.minimum((np.arange(height) * gh) // height, gh - 1)
    cols = np.minimum((np.arange(width) * gw) // width, gw - 1)
    cell_rows = np.bincount(rows, minlength=gh).astype(float)
    cell_cols = np.bincount(cols, minlength=gw).astype(float)
    per_pixel = grid_map / np.outer(cell_rows, cell_cols)
    return per_pixel[rows][:, cols]


def lesion_disc(height: int, width: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Boolean ``(H, W)`` mask of pixels whose centre lies within ``radius`` of ``(cx, cy)``."""
    yy, xx = np.mgrid[0:height, 0:width]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2


def mask_share(density: np.ndarray, mask: np.ndarray) -> float:
    total = float(density.sum())
    return float(density[mask].sum() / total) if total > 0 else float("nan")


def lesion_geometry(attributes: pd.DataFrame | None, image_ids: Iterable[str]) -> dict[str, dict]:
    """image_id -> ``{cx, cy, radius}`` of the rendered main lesion (SkinSynth attributes)."""
    needed = {"md5hash", "lesion_cx", "lesion_cy", "lesion_radius_px"}
    if attributes is None or not needed <= set(attributes.columns):
        return {}
    table = attributes.drop_duplicates("md5hash").set_index("md5hash")
    return {i: {"cx": float(table.at[i, "lesion_cx"]), "cy": float(table.at[i, "lesion_cy"]),
                "radius": float(table.at[i, "lesion_radius_px"])}
            for i in image_ids if i in table.index}


# ---- model side --------------------------------------------------------------------------------------


@dataclass
class Explanation:
    """One image under one model: the answer and its relevance over the merged token grid."""

    image_id: str
    answer: str
    grid: np.ndarray                 # (rows, cols), sums to 1
    entropy: float
    image_attention: float | None    # raw attention mass on image tokens (attention method only)
    extra: dict[str, Any] = field(default_factory=dict)


def text_attention_modules(model) -> list[torch.nn.Module]:
    decoder = model.model.language_model if hasattr(model, "model") else model.get_decoder()
    return [layer.self_attn for layer in decoder.layers]


def use_eager_text_attention(model) -> None:
    """Attention weights exist only on the eager path; the vision tower keeps its kernel."""
    model.set_attn_implementation({"text_config": "eager"})


class _LayerReducer:
    """Forward hooks that reduce each layer's attention weights as the layer finishes."""

    def __init__(self, model, queries: slice, image_positions: np.ndarray):
        self.queries, self.keys = queries, torch.as_tensor(image_positions)
        self.modules = text_attention_modules(model)
        self.parts: list[torch.Tensor] = []
        self.handles: list[Any] = []

    def _hook(self, module, args, output) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError("attention weights not returned: load the model with eager text "
                               "attention (use_eager_text_attention) or use method 'gradxinput'")
        self.parts.append(_layer_part(weights, self.queries, self.keys))

    def __enter__(self) -> "_LayerReducer":
        self.handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _prompt_inputs(processor, example: dict, device: torch.device) -> dict:
    text = processor.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=example["images"], return_tensors="pt").to(device)


def _sequence_inputs(inputs: dict, full_ids: torch.Tensor, image_token_id: int) -> dict:
    """Forward inputs for prompt + answer: image tokens only ever sit in the prompt."""
    mm = torch.zeros_like(full_ids)
    prompt_len = inputs["input_ids"].shape[1]
    mm[:, :prompt_len] = inputs.get("mm_token_type_ids", inputs["input_ids"] == image_token_id).to(mm.dtype)
    return {"input_ids": full_ids, "attention_mask": torch.ones_like(full_ids), "mm_token_type_ids": mm,
            "pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"],
            "use_cache": False}


def attention_relevance(model, seq_inputs: dict, queries: slice, image_positions: np.ndarray
                        ) -> tuple[np.ndarray, float]:
    """Per-image-token mean attention from ``queries`` (over layers and heads) and its sum."""
    with torch.no_grad(), _LayerReducer(model, queries, image_positions) as reducer:
        model(**seq_inputs, logits_to_keep=1)  # logits are not needed: keep one position
    per_token = _mean_over_layers(reducer.parts)
    return per_token, float(per_token.sum())


def gradient_relevance(model, seq_inputs: dict, prompt_len: int, n_answer: int,
                       image_positions: np.ndarray) -> np.ndarray:
    """|x . dlogp/dx| per image-token embedding, logp = the answer's log-likelihood."""
    captured: dict[str, torch.Tensor] = {}

    def make_leaf(module, args, kwargs):
        embeds = kwargs["inputs_embeds"].detach().requires_grad_(True)
        captured["embeds"] = embeds
        return args, {**kwargs, "inputs_embeds": embeds}

    decoder = model.model.language_model
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # gradients for the inputs only: no parameter-sized buffers
    handle = decoder.register_forward_pre_hook(make_leaf, with_kwargs=True)
    try:
        with torch.enable_grad():
            # The last n_answer + 1 positions hold the queries that predicted the answer tokens.
            logits = model(**seq_inputs, logits_to_keep=n_answer + 1).logits[0, :-1].float()
            targets = seq_inputs["input_ids"][0, prompt_len:prompt_len + n_answer]
            logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).sum()
            logp.backward()
    finally:
        handle.remove()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    embeds = captured["embeds"]
    relevance = (embeds.grad[0] * embeds[0].detach()).sum(dim=-1).abs()
    return relevance[torch.as_tensor(image_positions, device=relevance.device)].float().cpu().numpy()


def explain_image(model, processor, example: dict, method: str = "attention",
                  max_new_tokens: int = 64) -> Explanation:
    """Greedy answer, then the answer's relevance map over the image's merged tokens."""
    device = next(model.parameters()).device
    inputs = _prompt_inputs(processor, example, device)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=processor.tokenizer.pad_token_id)
    answer_ids = generated[:, prompt_len:]
    n_answer = int(answer_ids.shape[1])
    full_ids = generated if n_answer else inputs["input_ids"]
    grid = merged_grid(inputs["image_grid_thw"][0].tolist(), processor.image_processor.merge_size)
    image_token_id = processor.image_token_id
    positions = image_token_positions(inputs["input_ids"][0].cpu().numpy(), image_token_id, grid)
    seq_inputs = _sequence_inputs(inputs, full_ids, image_token_id)
    queries = slice(prompt_len - 1, prompt_len - 1 + max(n_answer, 1))
    mass = None
    if method == "attention":
        per_token, mass = attention_relevance(model, seq_inputs, queries, positions)
    elif method == "gradxinput":
        if not n_answer:
            raise ValueError("gradxinput needs a non-empty answer")
        per_token = gradient_relevance(model, seq_inputs, prompt_len, n_answer, positions)
    else:
        raise ValueError(f"unknown method {method!r}")
    if per_token.sum() <= 0:
        per_token = np.ones_like(per_token)  # no signal at all reads as uniform, not a crash
    grid_map = (per_token / per_token.sum()).reshape(grid)
    answer = processor.batch_decode(answer_ids, skip_special_tokens=True)[0] if n_answer else ""
    return Explanation(example["image_id"], answer, grid_map, normalised_entropy(grid_map), mass,
                       {"answer_tokens": n_answer})


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("attention.device is cuda but no CUDA device is available")
    return torch.device(device)


def explain_variant(model_dir: str, examples: Sequence[dict], cfg: AttentionConfig) -> list[Explanation]:
    """Load one variant (bf16 on GPU, fp32 on CPU), explain images one at a time, free it."""
    from skinflow.model.base import load_model

    device = resolve_device(cfg.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, processor = load_model(model_dir, dtype=dtype)
    if cfg.method == "attention":
        use_eager_text_attention(model)
    model.to(device).eval()
    try:
        return [explain_image(model, processor, ex, cfg.method, cfg.max_new_tokens) for ex in examples]
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def score_explanation(exp: Explanation, size: tuple[int, int], geometry: dict | None,
                      margin: float) -> dict:
    """JSON-ready numbers for one (image, variant) cell; lesion numbers only with geometry."""
    width, height = size
    row: dict[str, Any] = {"image_id": exp.image_id, "answer": exp.answer,
                           "entropy": round(exp.entropy, 6),
                           "image_attention": None if exp.image_attention is None else round(exp.image_attention, 6),
                           "grid": np.round(exp.grid, 6).tolist(), **exp.extra}
    if geometry:
        mask = lesion_disc(height, width, geometry["cx"], geometry["cy"], geometry["radius"] * margin)
        row["lesion_share"] = round(mask_share(back_project(exp.grid, height, width), mask), 6)
        row["lesion_chance"] = round(float(mask.mean()), 6)
    return row


def variant_summary(rows: list[dict]) -> dict:
    """Per-variant means over images (lesion means over the images with geometry)."""
    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(float(np.mean(values)), 6) if values else None

    return {"n_images": len(rows), "mean_entropy": mean("entropy"), "mean_lesion_share": mean("lesion_share"),
            "mean_lesion_chance": mean("lesion_chance"), "mean_image_attention": mean("image_attention")}


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Half the L1 distance between two maps normalised to sum 1: 0 identical, 1 disjoint."""
    p, q = np.asarray(p, dtype=float).ravel(), np.asarray(q, dtype=float).ravel()
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def map_separation(grids: dict[str, Sequence[np.ndarray]], threshold: float) -> dict:
    """Whether the maps can show a difference between variants: per pair, the mean total-variation distance
    between their maps of the same images; per variant, the mean distance from a uniform map. ``separates``
    is true when some pair's distance exceeds ``threshold``; ``verdict`` says it in words for the figure."""
    names = list(grids)
    pairs = {f"{a} vs {b}": round(float(np.mean([total_variation(x, y) for x, y in zip(grids[a], grids[b])])), 6)
             for i, a in enumerate(names) for b in names[i + 1:]}
    from_uniform = {n: round(float(np.mean([total_variation(g, np.ones_like(g)) for g in grids[n]])), 6)
                    for n in names}
    widest = max(pairs.items(), key=lambda kv: kv[1]) if pairs else (None, 0.0)
    separates = widest[1] > threshold
    if not pairs:
        verdict = "one variant only: nothing to compare"
    elif separates:
        verdict = f"the maps differ between variants (largest mean TV distance {widest[1]:.3f}, {widest[0]})"
    else:
        verdict = (f"these maps do not separate the variants: every pair's mean TV distance is at most "
                   f"{widest[1]:.3f} (threshold {threshold}), and the maps are within "
                   f"{max(from_uniform.values()):.3f} of uniform; the figure shows no difference between models")
    return {"pairwise_tv": pairs, "tv_from_uniform": from_uniform, "threshold": threshold,
            "separates": separates, "verdict": verdict}
