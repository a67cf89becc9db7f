"""FDLinear (Frequency Dynamic Linear) and its conversion of a Qwen2.5-VL vision tower (DVE).

A linear weight W0 (O x I) is stored as its 2-D spectrum Theta = rfft2(W0) / m, m = min(O, I) // 2. The rfft2 positions
are split by radius into K disjoint bands; the dense basis W_k = irfft2(m * band_k(Theta)) of each band is computed
once per forward, and the bases are mutually orthogonal and sum to W0. A small head reads one descriptor per image (mean
of its tokens) and predicts band weights beta (K), input scales c (I) and output scales f (O), all 1 at init, so that
    y_n = f_n * ((x_n * c_n) @ (sum_k beta_nk W_k)^T) + b       for the tokens x_n of image n.
At init the layer therefore reproduces the original nn.Linear.

The bases are a function of Theta alone, so a layer caches them between forwards (see `FDLinear.cached_bases`):
generation, evaluation and the no-grad passes of an RL step reuse them until an optimizer step changes Theta.

Qwen2.5-VL packs all images of a batch into one (tokens, hidden) sequence. `convert_vision_tower` installs hooks that
hand each FDLinear the per-image token counts (t*h*w from `grid_thw`) for the duration of its block
(see `_install_hooks`).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

PROJECTIONS = ("qkv", "proj", "gate_proj", "up_proj", "down_proj")
Projection = Literal["qkv", "proj", "gate_proj", "up_proj", "down_proj"]
_SEGMENTS_KWARG = "dve_segment_lengths"  # extra tower kwarg carrying per-image token counts down to the blocks
_MIX_CHUNK = 8  # images whose dense weights are synthesised together: reads the K bases once per chunk, not per image


class DVEConfig(BaseModel):
    """Which vision-tower linears become FDLinear. Stored as ``config.dve`` so a saved model can be rebuilt."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    blocks: list[int] | Literal["all"] = "all"
    projections: list[Projection] = Field(default_factory=lambda: list(PROJECTIONS))
    num_bands: int = Field(4, ge=1)
    head_lr_scale: float = Field(1.0, gt=0)  # used by `dve_param_groups`


# ----------------------------------------------------------------------------------------------------------- bands
@functools.lru_cache(maxsize=64)
def _band_masks(out_features: int, in_features: int, num_bands: int, device: torch.device) -> Tensor:
    """Boolean (K, O, I//2+1) masks: band k holds the k-th block of rfft2 positions sorted by radius.

    Pure function of the shapes, so it is cached here rather than stored as a buffer: nothing to save, and it survives
    meta-device construction and `.to()`.
    """
    cpu = torch.device("cpu")  # explicit: this may first run under a `torch.device("meta")` context
    fu = torch.fft.fftfreq(out_features, dtype=torch.float64, device=cpu)
    fv = torch.fft.rfftfreq(in_features, dtype=torch.float64, device=cpu)
    radius = (fu[:, None] ** 2 + fv[None, :] ** 2).sqrt().flatten()
    n = radius.numel()
    if not 1 <= num_bands <= n:
        raise ValueError(f"num_bands={num_bands} must be in [1, {n}] for a {out_features}x{in_features} weight")
    order = torch.sort(radius, stable=True).indices
    band = torch.empty(n, dtype=torch.long, device=cpu)
    band[order] = torch.arange(n, device=cpu) * num_bands // n  # rank r -> band floor(rK/n): sizes differ by <= 1
    band = band.view(out_features, -1)
    # In the self-conjugate columns (v = 0, and v = I/2 for even I) positions u and -u are one real frequency pair that
    # irfft2 merges; they have equal radius but may straddle a cut. Keep each pair in one band so bases stay orthogonal
    # (moves a few positions across a cut; in degenerate tiny shapes a band can end up empty, i.e. a zero basis).
    u = torch.arange(out_features, device=cpu)
    for v in {0, band.shape[1] - 1} if in_features % 2 == 0 else {0}:
        band[:, v] = torch.minimum(band[u, v], band[(-u) % out_features, v])
    return (band == torch.arange(num_bands, device=cpu)[:, None, None]).to(device)


# ---------------------------------------------------------------------------------------------------------- basis cache
# Every optimizer step anywhere in the process advances this counter, and a cached basis records the value it was
# built under. Theta's own version counter misses updates that swap storage rather than write into it (ZeRO-3 and
# FSDP gather parameters into fresh buffers, whose address the allocator may reuse, under an unchanged version).
_optimizer_steps = itertools.count(1)
_optimizer_epoch = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_epoch
    _optimizer_epoch = next(_optimizer_steps)


register_optimizer_step_post_hook(_count_optimizer_step)


def _spectrum_to_bases(spectrum: Tensor, masks: Tensor, scale: int, shape: tuple[int, int]) -> Tensor:
    real = torch.promote_types(spectrum.dtype, torch.float32)
    spec = torch.view_as_complex(spectrum.to(real)) * scale
    return torch.fft.irfft2(torch.where(masks, spec, 0), s=shape)


class _CachedBases(torch.autograd.Function):
    """Hands out precomputed bases as a differentiable function of Theta.

    Forward returns the cached tensor (no FFT). Backward is the adjoint of Theta -> W_k, written out as the op-by-op
    reverse of `_spectrum_to_bases` (what autograd would run for it: the irfft2 backward is a forward-normalised
    rfft2 with the conjugate-mirrored columns doubled), so it needs nothing from the forward and gives the same
    gradient as an uncached forward.
    """

    @staticmethod
    def forward(ctx, spectrum, bases, masks, scale):
        ctx.save_for_backward(masks)
        ctx.scale, ctx.spectrum_dtype = scale, spectrum.dtype
        return bases.view_as(bases)  # a view: the cache entry itself never carries this graph's grad_fn

    @staticmethod
    def backward(ctx, grad):
        (masks,) = ctx.saved_tensors
        real = torch.promote_types(ctx.spectrum_dtype, torch.float32)
        g = torch.fft.rfft2(grad.to(real), norm="forward")
        mirrored = grad.shape[-1] - g.shape[-1]  # columns 1..I-(I//2+1) stand for two conjugate positions
        if mirrored > 0:
            g[..., 1 : 1 + mirrored] *= 2
        g = torch.where(masks, g, 0).sum(0) * ctx.scale  # bands are disjoint: the sum over K adds only zeros
        return torch.view_as_real(g).to(ctx.spectrum_dtype), None, None, None


# ----------------------------------------------------------------------------------------------------------- op
def _mixed_weights(beta: Tensor, bases: Tensor):
    """Yield (first image, W for a chunk of images) with W[j] = sum_k beta[j, k] bases[k]; one GEMM reads bases once."""
    flat = bases.reshape(bases.shape[0], -1)
    for start in range(0, beta.shape[0], _MIX_CHUNK):
        yield start, (beta[start : start + _MIX_CHUNK] @ flat).view(-1, *bases.shape[1:])


class _DynamicProject(torch.autograd.Function):
    """y_n = f_n * ((x_n * c_n) @ W_n^T) with W_n = sum_k beta_nk B_k, per image segment n of a packed x.

    Cost: y_n needs one T*O*I matmul whether W_n is formed first (K*O*I, cheap) or the K basis outputs are mixed
    (K matmuls, K x the FLOPs), so W_n is formed. Why a custom Function instead of torch.utils.checkpoint: checkpoint
    would replay the whole forward in backward, including the big matmul (4 matmuls instead of Linear's 3, >= 1.33x).
    Here backward only re-synthesises W_n and never stores it; saved are x and the shared bases (K*O*I, held until
    backward; with block-level gradient checkpointing only one block's worth at a time). The f and c gradients
    come from quantities backward builds anyway (P = gy^T (x*c) is the weight-gradient matmul), so the pre-scale output
    is not saved either.
    """

    @staticmethod
    def forward(ctx, x, c, f, beta, bases, lengths):
        y = x.new_empty(x.shape[0], bases.shape[1])
        xs, ys = x.split(lengths), y.split(lengths)  # views: results are written in place, no concatenation
        for start, weights in _mixed_weights(beta, bases):
            for j, w in enumerate(weights):
                n = start + j
                torch.mm(xs[n] * c[n], w.T, out=ys[n]).mul_(f[n])
        ctx.save_for_backward(x, c, f, beta, bases)
        ctx.lengths = lengths
        return y

    @staticmethod
    def backward(ctx, gy):
        x, c, f, beta, bases = ctx.saved_tensors
        need_x, need_c, need_f, need_beta, need_bases = ctx.needs_input_grad[:5]
        need_w = need_f or need_beta or need_bases
        xs, gys = x.split(ctx.lengths), gy.split(ctx.lengths)
        gx = torch.empty_like(x) if need_x else None
        gxs = gx.split(ctx.lengths) if need_x else None
        gc, gf = torch.zeros_like(c), torch.zeros_like(f)
        gbeta, gbases = torch.zeros_like(beta), (torch.zeros_like(bases) if need_bases else None)
        for start, weights in _mixed_weights(beta, bases):
            gw = torch.empty_like(weights) if need_w else None  # per-image weight gradients of this chunk
            for j, w in enumerate(weights):
                n = start + j
                if need_x or need_c:
                    gxt = (gys[n] * f[n]) @ w  # gradient w.r.t. x*c
                    if need_c:
                        gc[n] = (gxt * xs[n]).sum(0)
                    if need_x:
                        torch.mul(gxt, c[n], out=gxs[n])
                if need_w:
                    torch.mm(gys[n].T, xs[n] * c[n], out=gw[j])  # (O, I), the usual weight-gradient matmul
                    if need_f:
                        gf[n] = torch.linalg.vecdot(gw[j], w)  # row-wise dot, no (O, I) temporary
                    gw[j].mul_(f[n][:, None])
            if need_beta:
                gbeta[start : start + len(gw)] = gw.flatten(1) @ bases.flatten(1).T
            if need_bases:
                gbases.view(len(bases), -1).addmm_(beta[start : start + len(gw)].T, gw.flatten(1))
        return gx, gc, gf, gbeta, gbases, None


class _DynamicHead(nn.Module):
    """h = ReLU(RMSNorm(A g)); c = 2 sigmoid(C h), f = 2 sigmoid(F h), beta = 2 sigmoid(B h). C, F, B start at zero."""

    def __init__(self, in_features: int, out_features: int, num_bands: int, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        hidden = max(in_features // 16, 16)
        self.reduce = nn.Linear(in_features, hidden, bias=False, **kw)  # A
        self.norm = nn.RMSNorm(hidden, eps=1e-6, **kw)
        self.in_gate = nn.Linear(hidden, in_features, **kw)  # C
        self.out_gate = nn.Linear(hidden, out_features, **kw)  # F
        self.band_gate = nn.Linear(hidden, num_bands, **kw)  # B
        for gate in (self.in_gate, self.out_gate, self.band_gate):
            nn.init.zeros_(gate.weight)
            nn.init.zeros_(gate.bias)

    def forward(self, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = F.relu(self.norm(self.reduce(g)))
        return tuple(2 * torch.sigmoid(gate(h)) for gate in (self.in_gate, self.out_gate, self.band_gate))


# ----------------------------------------------------------------------------------------------------------- layer
class FDLinear(nn.Module):
    """Frequency dynamic linear layer; see the module docstring.

    Inputs: (B, T, I) with one descriptor per batch element, or packed (N, I) whose image boundaries are
    `segment_lengths` (set by the tower hooks); without boundaries a 2-D input is one image unless `require_segments`.
    """

    def __init__(self, in_features: int, out_features: int, num_bands: int = 4, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.num_bands = in_features, out_features, num_bands
        self.scale = max(min(out_features, in_features) // 2, 1)  # m
        # real and imaginary parts of rfft2(W0) / m, (O, I//2+1, 2)
        self.spectrum = nn.Parameter(torch.zeros(out_features, in_features // 2 + 1, 2, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.head = _DynamicHead(in_features, out_features, num_bands, device=device, dtype=dtype)
        self.segment_lengths: tuple[int, ...] | None = None
        self.require_segments = False
        # Bases reused across forwards while Theta is unchanged. Costs K x the dense weight's memory per layer for as
        # long as the model lives; `set_basis_cache(model, False)` trades that memory for an FFT per forward.
        self.cache_bases = True
        self._basis_cache: tuple[tuple, Tensor] | None = None
        _band_masks(out_features, in_features, num_bands, torch.device("cpu"))  # validate num_bands early

    @classmethod
    def from_linear(cls, linear: nn.Linear, num_bands: int = 4) -> FDLinear:
        w = linear.weight
        fd = cls(linear.in_features, linear.out_features, num_bands, linear.bias is not None, w.device, w.dtype)
        with torch.no_grad():
            real = torch.promote_types(w.dtype, torch.float32)
            fd.spectrum.copy_(torch.view_as_real(torch.fft.rfft2(w.to(real))) / fd.scale)
            if linear.bias is not None:
                fd.bias.copy_(linear.bias)
        return fd

    def band_bases(self) -> Tensor:
        """The K dense bases W_k = irfft2(m * band_k(Theta)), (K, O, I), in >= fp32; differentiable w.r.t. Theta."""
        masks = _band_masks(self.out_features, self.in_features, self.num_bands, self.spectrum.device)
        return _spectrum_to_bases(self.spectrum, masks, self.scale, (self.out_features, self.in_features))

    def cached_bases(self, dtype: torch.dtype) -> Tensor:
        """`band_bases()` cast to `dtype`, rebuilt only when Theta may have changed; what `forward` uses.

        The entry is keyed on Theta's version counter (bumped by every in-place write: optimizer updates,
        `load_state_dict`, `copy_` under no_grad), its storage address, device and dtype, and the process-wide
        optimizer step count. Writes through `spectrum.data` bypass the version counter: call `clear_basis_cache`
        after those. With grad enabled and Theta trainable the cached tensor is wrapped in `_CachedBases`, so
        gradients reach Theta exactly as without the cache (checkpoint replays and micro-batches hit it too).
        """
        theta = self.spectrum
        if not self.cache_bases:
            return self.band_bases().to(dtype)
        key = (theta._version, theta.data_ptr(), theta.device, theta.dtype, dtype, _optimizer_epoch)
        hit = self._basis_cache is not None and self._basis_cache[0] == key
        if hit and self._basis_cache[1].is_inference() and not torch.is_inference_mode_enabled():
            hit = False  # an inference-mode tensor cannot take part in autograd
        if not hit:
            self._basis_cache = None  # free the stale entry before building its replacement
            with torch.no_grad():
                self._basis_cache = (key, self.band_bases().to(dtype))
        bases = self._basis_cache[1]
        if torch.is_grad_enabled() and theta.requires_grad:
            masks = _band_masks(self.out_features, self.in_features, self.num_bands, theta.device)
            return _CachedBases.apply(theta, bases, masks, self.scale)
        return bases

    def clear_basis_cache(self) -> None:
        self._basis_cache = None

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .half(), ...: the entry belongs to the old tensor
        self._basis_cache = None
        return super()._apply(fn, recurse)

    def __getstate__(self):  # deepcopy (e.g. a frozen reference model) and pickle: do not duplicate the cache
        state = super().__getstate__()
        return {**state, "_basis_cache": None}

    def band_sizes(self) -> list[int]:
        masks = _band_masks(self.out_features, self.in_features, self.num_bands, torch.device("cpu"))
        return masks.sum((1, 2)).tolist()

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """Plain nn.Linear with the static weight sum_k W_k (the head's per-image modulation is dropped)."""
        w = self.band_bases().sum(0)
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                        device=self.spectrum.device, dtype=self.spectrum.dtype)
        lin.weight.copy_(w)
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin

    def _segment_lengths(self, x: Tensor) -> tuple[int, ...]:
        if x.dim() == 3:
            return (x.shape[1],) * x.shape[0]
        if x.dim() != 2:
            raise ValueError(f"FDLinear expects (B, T, I) or packed (N, I) input, got {tuple(x.shape)}")
        if self.segment_lengths is None and self.require_segments:
            raise RuntimeError("FDLinear in a converted vision tower got no image boundaries: call the tower itself "
                               "(its hooks supply them), not a block or layer directly")
        lengths = tuple(self.segment_lengths or (x.shape[0],))
        if sum(lengths) != x.shape[0] or min(lengths) <= 0:
            raise RuntimeError(f"image segment lengths {lengths} do not partition {x.shape[0]} tokens")
        return lengths

    def modulation(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, ...]]:
        """Per-image c (n, I), f (n, O), beta (n, K) from the mean token of each image, and the segment lengths."""
        lengths = self._segment_lengths(x)
        g = torch.stack([seg.mean(0) for seg in x.reshape(-1, self.in_features).split(lengths)])
        with torch.autocast(x.device.type, enabled=False):  # tiny head: run it in its own parameter dtype
            return (*self.head(g.to(self.head.reduce.weight.dtype)), lengths)

    def dynamic_weights(self, x: Tensor) -> Tensor:
        """Effective per-image weights (f c^T) * sum_k beta_k W_k, (n_images, O, I); for inspection and tests."""
        bases = self.band_bases()
        c, f, beta, _ = (t.to(bases.dtype) if torch.is_tensor(t) else t for t in self.modulation(x))
        return torch.einsum("nk,koi->noi", beta, bases) * f[:, :, None] * c[:, None, :]

    def forward(self, x: Tensor) -> Tensor:
        # a custom Function is not autocast-aware (and mm(out=) is never autocast): pick the autocast dtype ourselves
        dev = x.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        c, f, beta, lengths = self.modulation(x)
        flat = x.reshape(-1, self.in_features).to(dt)
        y = _DynamicProject.apply(flat, c.to(dt), f.to(dt), beta.to(dt), self.cached_bases(dt), lengths)
        if self.bias is not None:
            y = y + self.bias.to(dt)
        return y.view(*x.shape[:-1], self.out_features)

    # parameter accounting (the bias is unchanged and left out)
    @property
    def dense_params(self) -> int:
        return self.out_features * self.in_features

    @property
    def spectral_params(self) -> int:
        return self.spectrum.numel()  # O * (I//2+1) * 2, slightly more than O * I

    @property
    def head_params(self) -> int:
        return sum(p.numel() for p in self.head.parameters())

    @property
    def overhead_pct(self) -> float:
        return 100.0 * (self.spectral_params + self.head_params - self.dense_params) / self.dense_params

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, num_bands={self.num_bands}"


# ----------------------------------------------------------------------------------------------------------- conversion
@dataclass
class LayerReport:
    name: str
    in_features: int
    out_features: int
    dense_params: int  # original weight (bias excluded: it is kept as is)
    spectral_params: int
    head_params: int
    overhead_pct: float

    @classmethod
    def of(cls, name: str, fd: FDLinear) -> LayerReport:
        return cls(name, fd.in_features, fd.out_features, fd.dense_params, fd.spectral_params, fd.head_params,
                   fd.overhead_pct)


@dataclass
class ConversionReport:
    config: dict[str, Any]
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def dense_params(self) -> int:
        return sum(r.dense_params for r in self.layers)

    @property
    def added_params(self) -> int:
        return sum(r.spectral_params + r.head_params - r.dense_params for r in self.layers)

    @property
    def overhead_pct(self) -> float:
        return 100.0 * self.added_params / self.dense_params if self.layers else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "layers": [asdict(r) for r in self.layers], "dense_params": self.dense_params,
                "added_params": self.added_params, "overhead_pct": self.overhead_pct}

    def summary(self) -> str:
        return (f"{len(self.layers)} FDLinear layers: {self.dense_params:,} dense weight params -> "
                f"+{self.added_params:,} ({self.overhead_pct:.2f}% overhead)")


def find_vision_tower(model: nn.Module) -> nn.Module:
    """The Qwen2.5-VL vision tower: the model itself, or the first one among its submodules (model.visual, ...)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel as Tower

    for module in model.modules():
        if isinstance(module, Tower):
            return module
    raise TypeError(f"no Qwen2.5-VL vision tower found in {type(model).__name__}")


def _tower_pre_hook(tower: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
    # Tokens per image before the spatial merge. The window permutation only reorders tokens *within* an image
    # (window_index is offset per image), so these contiguous boundaries hold for the sequence every block sees.
    # One descriptor per grid_thw entry: a video clip (t > 1) gets one descriptor, not one per frame.
    lengths = tuple(int(t * h * w) for t, h, w in grid.tolist())
    pixels = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    if sum(lengths) != pixels.shape[0]:
        raise ValueError(f"grid_thw gives {sum(lengths)} patches but hidden_states has {pixels.shape[0]} rows")
    kwargs[_SEGMENTS_KWARG] = lengths
    return args, kwargs


def _set_segments(block: nn.Module, lengths: tuple[int, ...] | None) -> None:
    for module in block.modules():
        if isinstance(module, FDLinear):
            module.segment_lengths = lengths


def _attn_pre_hook(block: nn.Module, attn: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    _set_segments(block, kwargs.pop(_SEGMENTS_KWARG, None))  # pop: the attention kernel must not see it
    return args, kwargs


def _mlp_post_hook(block: nn.Module, mlp: nn.Module, args: tuple, output: Any) -> None:
    _set_segments(block, None)


def _install_hooks(tower: nn.Module) -> None:
    """Hand image boundaries to every FDLinear of the tower, scoped to each block's forward.

    The tower pre-hook adds the per-image token counts as an extra tower kwarg; the tower forwards its **kwargs to
    every block and each block forwards them to its attention module, whose pre-hook pops them and sets them on the
    block's FDLinears; the MLP (last in the block) clears them. Going through the block kwargs rather than a global
    context matters for gradient checkpointing: the backward-time recompute of a block replays it with the kwargs the
    checkpoint captured, so the boundaries are right even though the tower forward returned long ago. It works the
    same in training and in `generate` (the tower runs once at prefill).
    """
    if getattr(tower, "_dve_hooks_installed", False):
        return
    tower.register_forward_pre_hook(_tower_pre_hook, with_kwargs=True)
    for block in tower.blocks:
        block.attn.register_forward_pre_hook(functools.partial(_attn_pre_hook, block), with_kwargs=True)
        block.mlp.register_forward_hook(functools.partial(_mlp_post_hook, block), always_call=True)
    tower._dve_hooks_installed = True


def convert_vision_tower(model_or_tower: nn.Module, cfg: DVEConfig | dict | None = None) -> ConversionReport:
    """Swap the selected nn.Linear layers of a Qwen2.5-VL vision tower for FDLinear in place (weights kept).

    Records the config as ``config.dve`` on the object passed (so `save_pretrained` writes it to config.json), installs
    the boundary hooks and returns per-layer parameter counts. Idempotent: already converted layers are reported again.
    """
    cfg = DVEConfig.model_validate(cfg or {})
    report = ConversionReport(cfg.model_dump())
    if not cfg.enabled:
        return report
    tower = find_vision_tower(model_or_tower)
    depth = len(tower.blocks)
    blocks = range(depth) if cfg.blocks == "all" else cfg.blocks
    if bad := [b for b in blocks if not 0 <= b < depth]:
        raise ValueError(f"DVE blocks {bad} out of range for a {depth}-block vision tower")
    for b in blocks:
        for proj in cfg.projections:
            kind = "attn" if proj in ("qkv", "proj") else "mlp"
            parent = getattr(tower.blocks[b], kind)
            layer = getattr(parent, proj)
            if type(layer) is nn.Linear:
                layer = FDLinear.from_linear(layer, cfg.num_bands)
                setattr(parent, proj, layer)
            elif not isinstance(layer, FDLinear):
                raise TypeError(f"blocks.{b}.{proj} is {type(layer).__name__}, expected nn.Linear")
            layer.require_segments = True
            report.layers.append(LayerReport.of(f"blocks.{b}.{kind}.{proj}", layer))
    _install_hooks(tower)
    if getattr(model_or_tower, "config", None) is not None:
        model_or_tower.config.dve = cfg.model_dump()
    return report


def set_basis_cache(model: nn.Module, enabled: bool) -> int:
    """Turn basis caching on or off for every FDLinear in `model` (off also frees the cached bases); returns the
    number of layers."""
    layers = [m for m in model.modules() if isinstance(m, FDLinear)]
    for layer in layers:
        layer.cache_bases = enabled
        layer.clear_basis_cache()
    return len(layers)


def clear_basis_cache(model: nn.Module) -> None:
    """Drop every FDLinear's cached bases (after writing to Theta through `.data`, or to free memory)."""
    for module in model.modules():
        if isinstance(module, FDLinear):
            module.clear_basis_cache()


def dve_param_groups(model: nn.Module, lr: float, head_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer groups: FDLinear head parameters at lr * head_lr_scale, every other trainable parameter at lr."""
    head = {id(p) for m in model.modules() if isinstance(m, FDLinear) for p in m.head.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) not in head], "lr": lr},
            {"params": [p for p in params if id(p) in head], "lr": lr * head_lr_scale}]


# ----------------------------------------------------------------------------------------------------------- save/load
def stored_dve_config(config: Any) -> DVEConfig | None:
    """The DVEConfig a converted model recorded in its (HF) config, if any."""
    raw = getattr(config, "dve", None)
    if raw is None and getattr(config, "vision_config", None) is not None:
        raw = getattr(config.vision_config, "dve", None)  # converted via the tower alone
    return None if raw is None else DVEConfig.model_validate(raw)


@functools.cache
def _dve_class(cls: type) -> type:
    """Subclass of `cls` whose __init__ converts the vision tower as recorded in config.dve."""

    def __init__(self, config, *args, **kwargs):
        cls.__init__(self, config, *args, **kwargs)
        if (dve := stored_dve_config(config)) is not None:
            convert_vision_tower(self, dve)

    # same name, so a re-saved config.json keeps the base architecture name
    attrs = {"__init__": __init__, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (cls,), attrs)


def load_dve_model(model_dir: str | Path, cls: type | None = None, **from_pretrained_kwargs: Any) -> nn.Module:
    """Load a model saved with `save_pretrained` after `convert_vision_tower`.

    The architecture is built from config.json, converted with the stored ``config.dve`` inside __init__, and the
    safetensors weights are loaded through the normal `from_pretrained` path (key renaming, shards, dtype, device_map).
    Any missing, unexpected or mismatched key is an error, so the load is strict.
    """
    if cls is None:
        from transformers import Qwen2_5_VLForConditionalGeneration as cls
    config = from_pretrained_kwargs.pop("config", None) or cls.config_class.from_pretrained(model_dir)
    if stored_dve_config(config) is None:
        raise ValueError(f"{model_dir} has no `dve` entry in its config; it was not saved from a converted model")
    model, info = _dve_class(cls).from_pretrained(model_dir, config=config, output_loading_info=True,
                                                  **from_pretrained_kwargs)
    if problems := {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}:
        raise RuntimeError(f"loading {model_dir} was not exact: {problems}")
    return model
