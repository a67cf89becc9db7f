"""Micro-benchmark: FDLinear vs nn.Linear at Qwen2.5-VL vision MLP shapes, and FDLinear's basis cache.

    python benchmarks/bench_fdlinear.py            # full shapes (1280->3420, 3420->1280), 1024 tokens per image
    python benchmarks/bench_fdlinear.py --smoke    # quarter-width shapes, 256 tokens per image (quick CPU check)

Two tables, both measured side by side in one run:

1. FDLinear / nn.Linear time for 1..4 packed images: a training step (forward + backward, Theta changed since the
   last step, so the bases are rebuilt as after every optimizer step), a no-grad forward without the basis cache and
   a no-grad forward with it (Theta unchanged, as in generation).
2. The cache itself, per shape with one image: generation-style repeated no-grad forwards with the cache off vs on,
   and training forward+backward with the cache off, on but missed (Theta changed: the first forward after an
   optimizer step) and on and hit (a second micro-batch or a gradient-checkpoint replay before the next step).

Writes benchmarks/results/fdlinear_<device>[_smoke].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from skinflow.model.fdlinear import FDLinear

# (in, out): Qwen2.5-VL-7B vision MLP gate/up and down projections, and the fused attention qkv
FULL_SHAPES = [(1280, 3420), (3420, 1280), (1280, 3840)]
SMOKE_SHAPES = [(320, 855), (855, 320), (320, 960)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(step, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)  # the least disturbed call: the development machine is shared


def _peak_mib(step, device: torch.device) -> float | None:
    """Peak memory one call allocates above what is already held (CUDA only; None on CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - held) / 2**20


def _theta_changed(fd: FDLinear) -> None:
    """What an optimizer step does to the cache: an in-place write to Theta (here a no-op value, same cost class)."""
    with torch.no_grad():
        fd.spectrum.add_(0.0)


def _layers(in_f, out_f, device, dtype):
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f, device=device, dtype=dtype)
    return lin, FDLinear.from_linear(lin)


def _steps(layer, x, gy):
    def train():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(gy)

    def infer():
        with torch.no_grad():
            layer(x)

    return train, infer


def bench(in_f, out_f, n_images, tokens, device, dtype, warmup, iters) -> dict:
    lin, fd = _layers(in_f, out_f, device, dtype)
    fd.segment_lengths = (tokens,) * n_images
    x = torch.randn(n_images * tokens, in_f, device=device, dtype=dtype, requires_grad=True)
    gy = torch.randn(n_images * tokens, out_f, device=device, dtype=dtype)
    lin_train, lin_infer = _steps(lin, x, gy)
    fd_train, fd_infer = _steps(fd, x, gy)

    def fd_train_after_update():
        _theta_changed(fd)
        fd_train()

    def fd_infer_uncached():
        fd.cache_bases = False
        try:
            fd_infer()
        finally:
            fd.cache_bases = True

    t = {
        "fwd_bwd_linear": _time(lin_train, device, warmup, iters),
        "fwd_bwd_fdlinear": _time(fd_train_after_update, device, warmup, iters),
        "fwd_linear": _time(lin_infer, device, warmup, iters),
        "fwd_fdlinear_uncached": _time(fd_infer_uncached, device, warmup, iters),
        "fwd_fdlinear_cached": _time(fd_infer, device, warmup, iters),
    }
    row = {"in": in_f, "out": out_f, "images": n_images, "tokens_per_image": tokens}
    row |= {f"{k}_ms": 1e3 * v for k, v in t.items()}
    peak_linear, peak_fd = _peak_mib(lin_train, device), _peak_mib(fd_train_after_update, device)
    if peak_linear is not None:
        row |= {"fwd_bwd_peak_linear_mib": peak_linear, "fwd_bwd_peak_fdlinear_mib": peak_fd,
                "fwd_bwd_peak_ratio": peak_fd / peak_linear}
    row["fwd_bwd_ratio"] = t["fwd_bwd_fdlinear"] / t["fwd_bwd_linear"]
    row["fwd_uncached_ratio"] = t["fwd_fdlinear_uncached"] / t["fwd_linear"]
    row["fwd_cached_ratio"] = t["fwd_fdlinear_cached"] / t["fwd_linear"]
    return row


def bench_cache(in_f, out_f, tokens, device, dtype, warmup, iters, repeats) -> dict:
    """One image; `repeats` no-grad forwards per timed call, as a rollout re-encodes images under fixed Theta."""
    _, fd = _layers(in_f, out_f, device, dtype)
    x = torch.randn(tokens, in_f, device=device, dtype=dtype, requires_grad=True)
    gy = torch.randn(tokens, out_f, device=device, dtype=dtype)
    train, infer = _steps(fd, x, gy)

    def generation(cache: bool):
        def run():
            fd.cache_bases = cache
            _theta_changed(fd)  # every timed call starts from fresh weights: the first forward pays for the bases
            for _ in range(repeats):
                infer()
        return run

    def training(cache: bool, changed: bool):
        def run():
            fd.cache_bases = cache
            if changed:
                _theta_changed(fd)
            train()
        return run

    t = {
        "gen_uncached": _time(generation(False), device, warmup, iters),
        "gen_cached": _time(generation(True), device, warmup, iters),
        "train_uncached": _time(training(False, True), device, warmup, iters),
        "train_cache_miss": _time(training(True, True), device, warmup, iters),
        "train_cache_hit": _time(training(True, False), device, warmup, iters),
    }
    fd.cache_bases = True
    cache_mb = fd.num_bands * out_f * in_f * torch.finfo(dtype).bits / 8 / 2**20
    row = {"in": in_f, "out": out_f, "tokens": tokens, "repeats": repeats, "cache_mib_per_layer": round(cache_mb, 1)}
    row |= {f"{k}_ms": 1e3 * v for k, v in t.items()}
    row["gen_speedup"] = t["gen_uncached"] / t["gen_cached"]
    row["train_miss_vs_uncached"] = t["train_cache_miss"] / t["train_uncached"]
    row["train_hit_speedup"] = t["train_uncached"] / t["train_cache_hit"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="reduced shapes for a quick CPU run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--tokens", type=int, help="tokens per image (default 1024, smoke 256)")
    ap.add_argument("--images", help="images per call, comma list (default 1,4,16 on cuda, 1,2,4 on cpu)")
    ap.add_argument("--repeats", type=int, default=8, help="no-grad forwards per generation-style call")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a busy shared machine)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    shapes = SMOKE_SHAPES if args.smoke else FULL_SHAPES
    tokens = args.tokens or (256 if args.smoke else 1024)
    iters = args.iters or (20 if device.type == "cuda" else 5)
    images = args.images or ("1,4,16" if device.type == "cuda" else "1,2,4")
    warmup = 5 if device.type == "cuda" else 1

    rows = []
    print(f"device={device} dtype={dtype} threads={torch.get_num_threads()} tokens/image={tokens}")
    print("FDLinear / nn.Linear time (training step rebuilds the bases; no-grad forward without / with the cache)")
    print(f"{'in->out':>11} {'imgs':>4} {'linear ms':>10} {'fdlinear ms':>12} {'fwd+bwd x':>9} "
          f"{'fwd x':>7} {'fwd cached x':>12}")
    for in_f, out_f in shapes:
        for n in map(int, images.split(",")):
            r = bench(in_f, out_f, n, tokens, device, dtype, warmup, iters)
            rows.append(r)
            print(f"{in_f:>5}->{out_f:<5} {n:>4} {r['fwd_bwd_linear_ms']:>10.2f} {r['fwd_bwd_fdlinear_ms']:>12.2f} "
                  f"{r['fwd_bwd_ratio']:>9.2f} {r['fwd_uncached_ratio']:>7.2f} {r['fwd_cached_ratio']:>12.2f}")

    cache_rows = []
    print(f"\nbasis cache, 1 image: {args.repeats} no-grad forwards per call (generation) and one fwd+bwd (training)")
    print(f"{'in->out':>11} {'gen off ms':>10} {'gen on ms':>10} {'speedup':>8} | {'train off':>9} "
          f"{'on, miss':>9} {'on, hit':>9} {'MiB/layer':>9}")
    for in_f, out_f in shapes:
        r = bench_cache(in_f, out_f, tokens, device, dtype, warmup, iters, args.repeats)
        cache_rows.append(r)
        print(f"{in_f:>5}->{out_f:<5} {r['gen_uncached_ms']:>10.1f} {r['gen_cached_ms']:>10.1f} "
              f"{r['gen_speedup']:>7.2f}x | {r['train_uncached_ms']:>9.1f} {r['train_cache_miss_ms']:>9.1f} "
              f"{r['train_cache_hit_ms']:>9.1f} {r['cache_mib_per_layer']:>9.1f}")

    name = device.type if device.type == "cpu" else torch.cuda.get_device_name(device).replace(" ", "_")
    out = args.out / f"fdlinear_{name}{'_smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": str(device), "device_name": name, "dtype": str(dtype), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "platform": platform.platform(), "smoke": args.smoke, "iters": iters,
            "loadavg_after": os.getloadavg()}  # 1/5/15-minute load: other jobs on a shared machine
    out.write_text(json.dumps({"meta": meta, "results": rows, "cache": cache_rows}, indent=2))
    peaks = [r["fwd_bwd_peak_ratio"] for r in rows if "fwd_bwd_peak_ratio" in r]
    if peaks:
        print(f"fwd+bwd peak memory ratio FDLinear / nn.Linear: {min(peaks):.2f}x .. {max(peaks):.2f}x")
    print(f"\nmean fwd+bwd ratio {statistics.mean(r['fwd_bwd_ratio'] for r in rows):.2f}x; "
          f"generation-style speedup from the cache "
          f"{statistics.mean(r['gen_speedup'] for r in cache_rows):.2f}x -> {out}")


if __name__ == "__main__":
    main()
