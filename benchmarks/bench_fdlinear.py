"""Micro-benchmark: FDLinear vs nn.Linear forward+backward at Qwen2.5-VL vision MLP shapes.

    python benchmarks/bench_fdlinear.py            # full shapes (1280->3420, 3420->1280), 1024 tokens per image
    python benchmarks/bench_fdlinear.py --smoke    # quarter-width shapes, 256 tokens per image (quick CPU check)

Prints the time ratio FDLinear / nn.Linear (target <= 1.25x on GPU) for 1..4 packed images and writes
benchmarks/results/fdlinear_<device>[_smoke].json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from skinflow.model.fdlinear import FDLinear

FULL_SHAPES = [(1280, 3420), (3420, 1280)]  # (in, out): vision MLP gate/up and down projections
SMOKE_SHAPES = [(320, 855), (855, 320)]


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
    return statistics.median(times)


def bench(in_f, out_f, n_images, tokens, device, dtype, warmup, iters) -> dict:
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f, device=device, dtype=dtype)
    fd = FDLinear.from_linear(lin)
    fd.segment_lengths = (tokens,) * n_images
    x = torch.randn(n_images * tokens, in_f, device=device, dtype=dtype, requires_grad=True)
    gy = torch.randn(n_images * tokens, out_f, device=device, dtype=dtype)

    def train_step(layer):
        def step():
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).backward(gy)
        return step

    def infer_step(layer):
        def step():
            with torch.no_grad():
                layer(x)
        return step

    row = {"in": in_f, "out": out_f, "images": n_images, "tokens_per_image": tokens}
    for mode, make in (("fwd_bwd", train_step), ("fwd", infer_step)):
        t_lin = _time(make(lin), device, warmup, iters)
        t_fd = _time(make(fd), device, warmup, iters)
        row |= {f"{mode}_linear_ms": 1e3 * t_lin, f"{mode}_fdlinear_ms": 1e3 * t_fd, f"{mode}_ratio": t_fd / t_lin}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="reduced shapes for a quick CPU run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--tokens", type=int, help="tokens per image (default 1024, smoke 256)")
    ap.add_argument("--images", default="1,2,4")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    shapes = SMOKE_SHAPES if args.smoke else FULL_SHAPES
    tokens = args.tokens or (256 if args.smoke else 1024)
    iters = args.iters or (20 if device.type == "cuda" else 3)
    warmup = 5 if device.type == "cuda" else 1

    rows = []
    print(f"device={device} dtype={dtype} threads={torch.get_num_threads()} tokens/image={tokens}")
    print(f"{'in->out':>11} {'imgs':>4} {'linear ms':>10} {'fdlinear ms':>12} {'fwd+bwd x':>9} {'fwd-only x':>10}")
    for in_f, out_f in shapes:
        for n in map(int, args.images.split(",")):
            r = bench(in_f, out_f, n, tokens, device, dtype, warmup, iters)
            rows.append(r)
            print(f"{in_f:>5}->{out_f:<5} {n:>4} {r['fwd_bwd_linear_ms']:>10.2f} {r['fwd_bwd_fdlinear_ms']:>12.2f} "
                  f"{r['fwd_bwd_ratio']:>9.2f} {r['fwd_ratio']:>10.2f}")
    name = device.type if device.type == "cpu" else torch.cuda.get_device_name(device).replace(" ", "_")
    out = args.out / f"fdlinear_{name}{'_smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": str(device), "device_name": name, "dtype": str(dtype), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "platform": platform.platform(), "smoke": args.smoke, "iters": iters}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"mean fwd+bwd ratio {statistics.mean(r['fwd_bwd_ratio'] for r in rows):.2f}x -> {out}")


if __name__ == "__main__":
    main()
