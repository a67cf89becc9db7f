"""A CLIP-style closed-set classifier trained with a Consistency-aware Focal Alignment (CFA) loss.

SkinCLIP-VL (2026) pairs a frozen CLIP-style image encoder with a CFA loss made of focal
re-weighting for long-tailed classes, image-text semantic alignment and a calibration term. Its
exact formula is not public; this module implements the three parts as separately weighted,
documented components so each can be switched off (weight 0) or checked on its own.

Model. A frozen encoder turns every image into a pooled feature vector once (cached on disk) and
every class name into a text embedding once. A small head projects both into a shared space of
``proj_dim``; the class logits are cosine similarities divided by ``temperature``:
``z[i, c] = cos(P_img f_i, P_txt t_c) / temperature``. The class texts act as the classifier
weights, as in CLIP zero-shot classification, so alignment and classification share one geometry.

Encoders (exactly one of ``vision_from`` / ``clip_dir``; nothing is ever downloaded):

* ``vision_from``: the project's own Qwen2.5-VL model directory. Image features are the vision
  tower's merged patch tokens (already in the language model's hidden size), pooled. A class text
  embedding is the mean of the base model's input token embeddings of the label name's tokens.
* ``clip_dir``: a local CLIP model directory (``CLIPModel``: vision and text towers). Image
  features are the projected tokens of the vision tower (``cls`` token or pooled patch tokens);
  class text embeddings come from its text tower on ``text_template``.

Loss (``cfa_loss``; all terms are batch means, ``total = w_f focal + w_a align + w_c calib``):

* ``focal``: class-balanced focal loss ``-alpha_y (1 - p_y)^gamma log p_y`` (Lin et al. 2017) with
  ``alpha`` from ``class_balance_weights``: ``effective_number`` (Cui et al. 2019,
  ``(1 - beta) / (1 - beta^n_c)``), ``inverse_frequency`` (``1 / n_c``) or ``none``; weights are
  normalised to sum to the number of classes, so ``gamma = 0`` is exactly the per-sample mean of
  class-weighted cross-entropy and ``none`` is plain cross-entropy.
* ``align``: symmetric image-text contrastive loss (CLIP's InfoNCE). Image to text: cross-entropy
  of each image against all class texts. Text to image: for each class present in the batch, its
  text against the batch's images, with the class's images as (uniformly weighted) positives. The
  second direction is what focal loss lacks: it pulls a class text towards its own images relative
  to other classes' images in the batch. With ``n_c`` positives its floor is ``log n_c``, not 0.
* ``calib``: MDCA, multi-class difference of confidence and accuracy (Hebbalaguppe et al. 2022):
  ``mean_c |mean_i p_ic - mean_i 1[y_i = c]|``. Chosen over a soft-binned ECE surrogate because it
  is differentiable everywhere without a binning bandwidth to tune, penalises every class rather
  than only the top one, costs one mean per class, and was designed to be paired with focal loss.
  It is 0 when predictions are confident and correct.

Training is deterministic for a seed (seeded init and shuffling on CPU). The head is selected by
the lowest validation negative log-likelihood, a proper scoring rule, so model selection does not
trade calibration for accuracy; ``patience`` epochs without improvement stop training early.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from skinflow.determinism import seed_everything
from skinflow.config import Section
from skinflow.io import atomic_path, md5_file

TOP_K = 6  # ranked list length, as the VLM variants' diagnosis lists
LOSS_TERMS = ("focal", "align", "calib", "total")


class CFAConfig(Section):
    """params.yaml section ``cfa_baseline``."""
    RUNTIME: ClassVar[frozenset[str]] = frozenset({"cache_dir", "threads", "train_threads"})  # see params runtime

    vision_from: str | None = "models/warmup"    # a local Qwen2.5-VL model dir (vision tower used)
    clip_dir: str | None = None                  # or a local CLIP model dir; set vision_from: null
    pooling: Literal["mean", "max", "mean_max", "cls"] = "mean_max"  # cls: CLIP only
    text_template: str = "{label}"               # class name -> text fed to the text side
    proj_dim: int = Field(64, ge=2)
    temperature: float = Field(0.1, gt=0)
    focal_gamma: float = Field(2.0, ge=0)
    class_balance: Literal["effective_number", "inverse_frequency", "none"] = "effective_number"
    cb_beta: float = Field(0.999, ge=0, lt=1)    # effective-number beta
    focal_weight: float = Field(1.0, ge=0)
    align_weight: float = Field(0.5, ge=0)
    calib_weight: float = Field(1.0, ge=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=2)
    patience: int | None = Field(20, ge=1)       # epochs without val-NLL improvement; None = off
    seed: int = 0
    extract_batch_size: int = Field(32, ge=1)
    cache_dir: str = ".cache/cfa"
    ece_bins: int = Field(15, ge=1)
    n_boot: int = Field(1000, ge=0)
    threads: int = Field(0, ge=0)                # torch CPU threads for extraction; 0 = default
    # The head has ~20k parameters: extra threads only add synchronisation (measured 5x slower
    # with 2 threads than with 1 on a busy 2-core machine).
    train_threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_encoder(self) -> "CFAConfig":
        if (self.vision_from is None) == (self.clip_dir is None):
            raise ValueError("set exactly one of vision_from (Qwen2.5-VL dir) and clip_dir (CLIP dir)")
        if self.pooling == "cls" and self.clip_dir is None:
            raise ValueError("pooling 'cls' needs a CLIP encoder: the Qwen vision tower has no CLS token")
        if "{label}" not in self.text_template:
            raise ValueError("text_template must contain '{label}'")
        return self


# ---- loss ---------------------------------------------------------------------------------------


def class_balance_weights(counts: Sequence[int] | torch.Tensor, scheme: str = "effective_number",
                          beta: float = 0.999) -> torch.Tensor:
    """Per-class alpha, normalised to sum to the number of classes.

    A class with no training images gets the weight of a class with one: it never appears as a
    target, so its weight only matters for the normalisation, and 1/0 would make the rest 0.
    """
    n = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1)
    if scheme == "effective_number":
        raw = (1 - beta) / (1 - beta ** n) if beta > 0 else torch.ones_like(n)
    elif scheme == "inverse_frequency":
        raw = 1 / n
    elif scheme == "none":
        raw = torch.ones_like(n)
    else:
        raise ValueError(f"unknown class_balance scheme {scheme!r}")
    return (raw * len(n) / raw.sum()).float()


def focal_term(logits: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor | None = None,
               gamma: float = 2.0) -> torch.Tensor:
    """Mean of ``-alpha_y (1 - p_y)^gamma log p_y`` over the batch."""
    log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    loss = -((1 - log_p.exp()) ** gamma) * log_p if gamma else -log_p
    if alpha is not None:
        loss = alpha.to(logits)[labels] * loss
    return loss.mean()


def align_term(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Symmetric image-text InfoNCE on image x class-text logits (see module docstring)."""
    image_to_text = F.cross_entropy(logits, labels)
    log_p_images = F.log_softmax(logits, dim=0)        # each class text over the batch's images
    present = torch.unique(labels)
    positives = (labels[:, None] == present[None, :]).to(logits)   # (batch, present classes)
    per_class = -(log_p_images[:, present] * positives).sum(0) / positives.sum(0)
    return (image_to_text + per_class.mean()) / 2


def calib_term(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MDCA: mean over classes of |mean predicted probability - observed class frequency|."""
    probs = F.softmax(logits, dim=1)
    frequency = F.one_hot(labels, logits.shape[1]).to(probs).mean(0)
    return (probs.mean(0) - frequency).abs().mean()


def cfa_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor | None = None,
             gamma: float = 2.0, focal_weight: float = 1.0, align_weight: float = 0.5,
             calib_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """``{"focal", "align", "calib", "total"}`` for ``(batch, classes)`` logits and index labels."""
    terms = {"focal": focal_term(logits, labels, alpha, gamma),
             "align": align_term(logits, labels),
             "calib": calib_term(logits, labels)}
    terms["total"] = (focal_weight * terms["focal"] + align_weight * terms["align"]
                      + calib_weight * terms["calib"])
    return terms


# ---- head ---------------------------------------------------------------------------------------


class CFAHead(nn.Module):
    """Standardise frozen features, project images and class texts, cosine logits / temperature."""

    def __init__(self, image_dim: int, text_dim: int, proj_dim: int, temperature: float):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, proj_dim)
        self.text_proj = nn.Linear(text_dim, proj_dim)
        self.temperature = temperature
        # Frozen features of a random or foreign tower have arbitrary scale: standardise with
        # training-set statistics, stored with the weights so inference needs nothing else.
        self.register_buffer("feature_mean", torch.zeros(image_dim))
        self.register_buffer("feature_std", torch.ones(image_dim))

    def fit_standardiser(self, features: torch.Tensor) -> None:
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0, unbiased=False).clamp(min=1e-6))

    def forward(self, features: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        images = F.normalize(self.image_proj((features - self.feature_mean) / self.feature_std), dim=-1)
        texts = F.normalize(self.text_proj(text_embeddings), dim=-1)
        return images @ texts.T / self.temperature


# ---- encoders and cached features ---------------------------------------------------------------


def _pool(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "mean":
        return tokens.mean(0)
    if pooling == "max":
        return tokens.max(0).values
    if pooling == "mean_max":
        return torch.cat([tokens.mean(0), tokens.max(0).values])
    raise ValueError(f"pooling {pooling!r} does not apply to these tokens")


def _model_key(model_dir: str | Path) -> str:
    """Digest of a model directory's weights and JSON configs (image processor sizes included)."""
    weights = sorted(Path(model_dir).glob("*.safetensors")) or sorted(Path(model_dir).glob("*.bin"))
    if not weights:
        raise FileNotFoundError(f"no model weights in {model_dir}")
    return "-".join(md5_file(f)[:12] for f in [*weights, *sorted(Path(model_dir).glob("*.json"))])


class QwenTowerEncoder:
    """The frozen vision tower (and input embeddings) of a local Qwen2.5-VL model directory."""

    def __init__(self, model_dir: str, pooling: str, text_template: str):
        from skinflow.model.base import load_model

        self.model, self.processor = load_model(model_dir)
        self.model.eval().requires_grad_(False)
        self.pooling, self.text_template = pooling, text_template
        self.key = f"qwen:{_model_key(model_dir)}:{pooling}"

    @torch.no_grad()
    def image_features(self, images: list) -> torch.Tensor:
        inputs = self.processor.image_processor(images=images, return_tensors="pt")
        merged = self.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        return torch.stack([_pool(tokens.float(), self.pooling) for tokens in merged])

    @torch.no_grad()
    def text_embeddings(self, labels: Sequence[str]) -> torch.Tensor:
        table = self.model.get_input_embeddings().weight
        rows = []
        for label in labels:
            ids = self.processor.tokenizer(self.text_template.format(label=label),
                                           add_special_tokens=False)["input_ids"]
            rows.append(table[torch.as_tensor(ids)].float().mean(0))
        return torch.stack(rows)


class ClipEncoder:
    """The frozen vision and text towers of a local CLIP model directory."""

    def __init__(self, clip_dir: str, pooling: str, text_template: str):
        from transformers import AutoTokenizer, CLIPModel
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        self.model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval().requires_grad_(False)
        self.image_processor = CLIPImageProcessorPil.from_pretrained(clip_dir, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)
        self.pooling, self.text_template = pooling, text_template
        self.key = f"clip:{_model_key(clip_dir)}:{pooling}"

    @torch.no_grad()
    def image_features(self, images: list) -> torch.Tensor:
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        hidden = self.model.vision_model(pixel_values=pixels).last_hidden_state
        # CLIP's own image embedding is projection(post_layernorm(CLS)); patches get the same maps.
        tokens = self.model.visual_projection(self.model.vision_model.post_layernorm(hidden))
        if self.pooling == "cls":
            return tokens[:, 0]
        return torch.stack([_pool(t[1:], self.pooling) for t in tokens])

    @torch.no_grad()
    def text_embeddings(self, labels: Sequence[str]) -> torch.Tensor:
        texts = [self.text_template.format(label=label) for label in labels]
        inputs = self.tokenizer(texts, padding=True, return_tensors="pt")
        pooled = self.model.text_model(input_ids=inputs["input_ids"],
                                       attention_mask=inputs["attention_mask"]).pooler_output
        return self.model.text_projection(pooled)


def load_encoder(cfg: CFAConfig) -> QwenTowerEncoder | ClipEncoder:
    if cfg.vision_from is not None:
        return QwenTowerEncoder(cfg.vision_from, cfg.pooling, cfg.text_template)
    return ClipEncoder(cfg.clip_dir, cfg.pooling, cfg.text_template)


def cached_features(encoder, paths: Sequence[str], cache_dir: str | Path, batch_size: int = 32,
                    progress: bool = False) -> tuple[torch.Tensor, bool]:
    """Pooled features for ``paths`` (in order) and whether they came from the cache.

    The cache key covers the encoder's weights and configs, the pooling and every image's bytes
    (in order), so editing an image or the encoder recomputes; the file is written atomically.
    """
    from skinflow.model.examples import load_rgb

    digest = hashlib.md5(encoder.key.encode(), usedforsecurity=False)
    for path in paths:
        digest.update(md5_file(path).encode())
    cache = Path(cache_dir) / f"features-{digest.hexdigest()}.safetensors"
    if cache.exists():
        return load_file(str(cache))["features"], True
    starts = range(0, len(paths), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="features", unit="batch")
    chunks = [encoder.image_features([load_rgb(p) for p in paths[s:s + batch_size]]) for s in starts]
    features = torch.cat(chunks).float().contiguous()
    with atomic_path(cache, suffix=".safetensors") as tmp:
        save_file({"features": features}, str(tmp))
    return features, False


# ---- training and prediction --------------------------------------------------------------------


def _evaluate(head: CFAHead, features: torch.Tensor, labels: torch.Tensor, texts: torch.Tensor,
              alpha: torch.Tensor, cfg: CFAConfig) -> dict[str, float]:
    with torch.no_grad():
        logits = head(features, texts)
        terms = _terms(logits, labels, alpha, cfg)
        out = {k: float(v) for k, v in terms.items()}
        out["nll"] = float(F.cross_entropy(logits, labels))
        out["accuracy"] = float((logits.argmax(1) == labels).float().mean())
    return out


def _terms(logits, labels, alpha, cfg: CFAConfig) -> dict[str, torch.Tensor]:
    return cfa_loss(logits, labels, alpha, cfg.focal_gamma, cfg.focal_weight, cfg.align_weight,
                    cfg.calib_weight)


def train_head(train_features: torch.Tensor, train_labels: torch.Tensor, text_embeddings: torch.Tensor,
               cfg: CFAConfig, val_features: torch.Tensor | None = None,
               val_labels: torch.Tensor | None = None) -> tuple[CFAHead, list[dict[str, Any]], dict]:
    """Train the head; returns ``(selected head, per-epoch history, summary)``.

    History rows: ``epoch``, the train means of every loss term, and ``val_*`` (loss terms, nll,
    accuracy) when a validation set is given. Without one the last epoch is kept.
    ``summary["final_losses"]`` are the train means of the selected epoch.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.train_threads)
    try:
        return _train(train_features, train_labels, text_embeddings, cfg, val_features, val_labels)
    finally:
        torch.set_num_threads(threads)


def _train(train_features, train_labels, text_embeddings, cfg: CFAConfig, val_features, val_labels):
    seed_everything(cfg.seed)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    head = CFAHead(train_features.shape[1], text_embeddings.shape[1], cfg.proj_dim, cfg.temperature)
    head.fit_standardiser(train_features)
    counts = torch.bincount(train_labels, minlength=text_embeddings.shape[0])
    alpha = class_balance_weights(counts, cfg.class_balance, cfg.cb_beta)
    optimiser = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    has_val = val_features is not None and val_labels is not None and len(val_labels) > 0

    history: list[dict[str, Any]] = []
    best_nll, best_epoch, best_state = float("inf"), 0, None
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        order = torch.randperm(len(train_labels), generator=shuffle)
        sums = dict.fromkeys(LOSS_TERMS, 0.0)
        for s in range(0, len(order), cfg.batch_size):
            batch = order[s:s + cfg.batch_size]
            terms = _terms(head(train_features[batch], text_embeddings), train_labels[batch], alpha, cfg)
            optimiser.zero_grad()
            terms["total"].backward()
            optimiser.step()
            for k in LOSS_TERMS:
                sums[k] += float(terms[k].detach()) * len(batch)
        row: dict[str, Any] = {"epoch": epoch, **{k: v / len(order) for k, v in sums.items()}}
        head.eval()
        if has_val:
            scores = _evaluate(head, val_features, val_labels, text_embeddings, alpha, cfg)
            row.update({f"val_{k}": v for k, v in scores.items()})
        history.append(row)
        if not has_val or row["val_nll"] < best_nll:
            best_nll, best_epoch = row.get("val_nll", float("nan")), epoch
            best_state = copy.deepcopy(head.state_dict())
        if has_val and cfg.patience is not None and epoch - best_epoch >= cfg.patience:
            break
    head.load_state_dict(best_state)
    head.eval()
    summary = {"train_seconds": time.perf_counter() - start, "epochs_run": len(history),
               "best_epoch": best_epoch, "alpha": alpha.tolist(), "train_class_counts": counts.tolist(),
               "final_losses": {k: history[best_epoch - 1][k] for k in LOSS_TERMS}}
    return head, history, summary


# The loss-term ablation: each term left out, and the focal term alone (weights replaced, everything else kept).
LOSS_VARIANTS = {
    "all": {},
    "no_focal": {"focal_weight": 0.0},
    "no_align": {"align_weight": 0.0},
    "no_calib": {"calib_weight": 0.0},
    "focal_only": {"align_weight": 0.0, "calib_weight": 0.0},
}


def loss_term_ablation(train_features: torch.Tensor, train_labels: torch.Tensor, text_embeddings: torch.Tensor,
                       cfg: CFAConfig, val_features: torch.Tensor, val_labels: torch.Tensor,
                       labels: Sequence[str]) -> list[dict[str, Any]]:
    """Train one head per ``LOSS_VARIANTS`` entry (same seed, same early stopping) and score it on the validation
    split: accuracy, NLL and ECE (``cfg.ece_bins`` bins, the binning of the reported ECE). A variant whose weights
    are all zero is skipped (nothing to train)."""
    from skinflow.baselines.classification_metrics import expected_calibration_error

    rows = []
    if not len(val_labels):
        return rows
    for name, change in LOSS_VARIANTS.items():
        variant = cfg.model_copy(update=change)
        if not (variant.focal_weight or variant.align_weight or variant.calib_weight):
            continue
        head, _, summary = train_head(train_features, train_labels, text_embeddings, variant, val_features,
                                      val_labels)
        probs, _ = predict(head, val_features, text_embeddings, labels)
        truth = val_labels.numpy()
        rows.append({
            "variant": name, "focal_weight": variant.focal_weight, "align_weight": variant.align_weight,
            "calib_weight": variant.calib_weight, "val_n": int(len(truth)),
            "val_accuracy": round(float((probs.argmax(1) == truth).mean()), 6),
            "val_nll": round(float(-np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-12, None)).mean()), 6),
            "val_ece": round(float(expected_calibration_error(probs, truth, cfg.ece_bins)), 6),
            "best_epoch": summary["best_epoch"],
        })
    return rows


@torch.no_grad()
def predict(head: CFAHead, features: torch.Tensor, text_embeddings: torch.Tensor,
            labels: Sequence[str], k: int = TOP_K) -> tuple[np.ndarray, list[list[str]]]:
    """Class probabilities ``(n, C)`` and each image's ranked top-``k`` label names."""
    head.eval()
    probs = F.softmax(head(features, text_embeddings), dim=1)
    order = torch.argsort(probs, dim=1, descending=True, stable=True)[:, :k]
    return probs.numpy(), [[labels[j] for j in row] for row in order.tolist()]


def truth_labels(rows) -> list[str | None]:
    """Each row's label, None where missing (pandas' "string" dtype holds pd.NA; the evaluation expects None)."""
    import pandas as pd

    return [None if pd.isna(v) else str(v) for v in rows["label"]]


def ranked_outputs(rows, ranked: Sequence[Sequence[str]]):
    """The evaluation's raw table for ranked label lists (one per row of ``rows``, a manifest slice): ``image_id``,
    ``label`` (None where missing), ``fitzpatrick_scale`` (-1 unknown) and ``raw_output``, the JSON the VLM
    answer parser reads, so a classifier's lists are mapped and scored exactly like a VLM's answers."""
    import pandas as pd

    from skinflow.captions.parser import render_diagnoses

    return pd.DataFrame({
        "image_id": rows["image_id"].astype(str).to_numpy(),
        "label": pd.Series(truth_labels(rows), dtype=object).to_numpy(),
        "fitzpatrick_scale": rows["fitzpatrick_scale"].fillna(-1).astype(int).to_numpy(),
        "raw_output": [render_diagnoses(list(r)) for r in ranked]})


# ---- persistence --------------------------------------------------------------------------------


def save_head(out_dir: str | Path, head: CFAHead, text_embeddings: torch.Tensor, labels: Sequence[str],
              cfg: CFAConfig, extra: dict[str, Any]) -> None:
    """``head.safetensors`` (weights, standardiser, class text embeddings) + ``config.json``."""
    out_dir = Path(out_dir)
    tensors = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    tensors["text_embeddings"] = text_embeddings.detach().float().contiguous()
    with atomic_path(out_dir / "head.safetensors", suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp))
    config = {"labels": list(labels), "image_dim": head.image_proj.in_features,
              "text_dim": head.text_proj.in_features, "cfa": cfg.model_dump(), **extra}
    with atomic_path(out_dir / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_head(model_dir: str | Path) -> tuple[CFAHead, torch.Tensor, list[str]]:
    """Inverse of ``save_head``: ``(head, class text embeddings, labels)``."""
    config = json.loads(Path(model_dir, "config.json").read_text(encoding="utf-8"))
    cfg = CFAConfig.model_validate(config["cfa"])
    tensors = load_file(str(Path(model_dir, "head.safetensors")))
    texts = tensors.pop("text_embeddings")
    head = CFAHead(config["image_dim"], config["text_dim"], cfg.proj_dim, cfg.temperature)
    head.load_state_dict(tensors)
    return head.eval(), texts, config["labels"]
