"""GRPO step cost on a Qwen2.5-VL-7B-shaped model (random weights): rollout vs training throughput, memory, MFU.

    python benchmarks/bench_grpo_step.py --smoke     # CPU: same code path, 2+2 layers at 1/8 width (minutes)
    python benchmarks/bench_grpo_step.py             # GPU: the real 7B dimensions in bf16 (8.29B parameters)
    python benchmarks/bench_grpo_step.py --keep /tmp/ws --variants dve-on_lora   # one variant per call, reusing
                                                                                 # the data and model in /tmp/ws

Each variant (DVE off/on x full fine-tuning/LoRA) runs the project's own GRPO runner, `skinflow.rl.grpo.run_grpo`,
in a fresh subprocess (clean peak-memory counters) for `--steps` optimizer steps on a tiny SkinSynth dataset; step 0 is
a warm-up and the rest are averaged. Timers wrap TRL's GRPOTrainer methods from outside, nothing is re-implemented:
  generate  = `_generate_single_turn` (HF `generate` on the training model: the rollouts), completion tokens counted
              after TRL's EOS masking;
  rollout   = `_prepare_inputs` (generate + rewards + old/reference log-probs);
  train     = `training_step` - rollout (the policy forward + backward; forward = `compute_loss`), tokens =
              non-padding prompt + completion tokens the loss forward reads (image pad tokens included);
  step      = callback on_step_begin -> on_step_end (adds the optimizer step).
MFU (GPU only) is against PEAK_FLOPS["cuda"] = 989 TFLOP/s (H100 SXM dense bf16) with the usual approximations:
training 6 * N * tokens (forward 2N + backward 4N per token), generation 2 * N * completion tokens, N = all model
parameters. They ignore attention's sequence-length term and the vision tower running on patches rather than text
tokens, and for LoRA the backward skips the frozen weights' gradients (closer to 4N), so LoRA MFU is overstated.
Step MFU = 6 * N * training tokens / step time. `skinflow.rl.grpo.ThroughputCallback`'s own tokens/s and MFU (from
TRL's token counter) are recorded next to these as a cross-check. With LoRA, PEFT freezes everything but the adapters,
DVE's FDLinear parameters included: compare `trainable_parameters` of the DVE-on and DVE-off LoRA rows.

Model: the public Qwen2.5-VL-7B dimensions (text 3584 hidden, 28 layers, 28/4 heads, 18944 MLP, vocab 152064; vision
1280 hidden, 32 blocks, 3420 MLP, 16 heads, full attention in blocks 7/15/23/31, merger out 3584). The tokenizer,
processor and chat template come from `skinflow.model.base.build_tiny` (its BPE only uses ~1k ids of the 152k
vocabulary, which changes nothing about the cost). Built directly on the device in the run dtype (bf16 on CUDA), so
the 7B build needs no 33 GB fp32 copy. GPU notes: full fine-tuning with beta > 0 holds policy, reference model, grads
and AdamW states (~83 GB in bf16) and is expected to run out of memory on an 80 GB card (use --beta 0 or an H200);
such a variant is recorded as failed, the others still run. The model is built in its own subprocess as well, so the
parent never holds GPU memory. The GPU mode has not been run yet.
Writes benchmarks/results/grpo_step_<device>[_smoke].json.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# (text hidden, layers, heads, kv heads, MLP, vocab; vision hidden, depth, MLP, heads, full-attention blocks)
SHAPES = {
    "full": dict(text_hidden=3584, text_layers=28, text_heads=28, text_kv_heads=4, text_intermediate=18944,
                 vocab=152064, vision_hidden=1280, vision_depth=32, vision_intermediate=3420, vision_heads=16,
                 fullatt=[7, 15, 23, 31], mrope=[16, 24, 24]),
    # 1/8 widths, 2 + 2 layers; heads chosen so head dims stay valid (vision keeps its 80, text GQA keeps 7:1)
    "smoke": dict(text_hidden=448, text_layers=2, text_heads=7, text_kv_heads=1, text_intermediate=2368,
                  vocab=19008, vision_hidden=160, vision_depth=2, vision_intermediate=428, vision_heads=2,
                  fullatt=[1], mrope=[16, 8, 8]),
}
VARIANTS = [{"dve": dve, "lora": lora} for dve in (False, True) for lora in (False, True)]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device_dtype() -> tuple[str, torch.dtype]:
    return ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)


# ----------------------------------------------------------------------------------------------------------- workspace
def build_data(root: Path) -> None:
    """A tiny SkinSynth run through the real ingest/validate/caption code (as tests/rl/test_grpo.py does)."""
    from skinflow.data.corpus import captioned_skinsynth

    captioned_skinsynth(root)


def build_model(out: Path, shape: dict, image_size: int, labels: list[str]) -> dict:
    """Tokenizer/processor/template from build_tiny, then the weights replaced by a model of `shape`."""
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from skinflow.model.base import BaseModelConfig, build_tiny

    pixels = image_size * image_size
    build_tiny(out, BaseModelConfig(min_pixels=pixels, max_pixels=pixels), labels)
    raw = json.loads((out / "config.json").read_text())
    text, vision = raw["text_config"], raw["vision_config"]
    text.pop("layer_types", None)  # derived from the layer count
    text.update(hidden_size=shape["text_hidden"], num_hidden_layers=shape["text_layers"],
                num_attention_heads=shape["text_heads"], num_key_value_heads=shape["text_kv_heads"],
                intermediate_size=shape["text_intermediate"], vocab_size=shape["vocab"])
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": shape["mrope"]}
    vision.update(hidden_size=shape["vision_hidden"], depth=shape["vision_depth"], num_heads=shape["vision_heads"],
                  intermediate_size=shape["vision_intermediate"], fullatt_block_indexes=shape["fullatt"],
                  out_hidden_size=shape["text_hidden"], window_size=112)
    config = Qwen2_5_VLConfig.from_dict(raw)
    device, dtype = _device_dtype()
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig.from_pretrained(out)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    model.save_pretrained(out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    vision_params = sum(p.numel() for p in model.model.visual.parameters())
    del model
    return {"parameters": params, "vision_parameters": vision_params}


# ----------------------------------------------------------------------------------------------------------- worker
class _Recorder:
    """Per optimizer step sums of timers and token counts, keyed by the trainer's global step."""

    def __init__(self) -> None:
        self.steps: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.extra: dict[str, float] = {}  # peak memory, ThroughputCallback values


REC = _Recorder()


def _timed(name: str, count=None):
    def wrap(fn):
        @functools.wraps(fn)
        def inner(self, *args, **kwargs):
            _sync()
            t0 = time.perf_counter()
            out = fn(self, *args, **kwargs)
            _sync()
            row = REC.steps[self.state.global_step]
            row[f"{name}_s"] += time.perf_counter() - t0
            if count is not None:
                for key, value in count(args, kwargs, out).items():
                    row[key] += value
            return out
        return inner
    return wrap


def _generation_counts(args, kwargs, out) -> dict:
    prompt_ids = args[0] if args else kwargs["prompt_ids"]
    return {"completion_tokens": sum(len(c) for c in out[0]), "prompt_tokens": sum(len(p) for p in prompt_ids),
            "sequences": len(out[0])}


def _loss_counts(args, kwargs, out) -> dict:
    inputs = args[1] if len(args) > 1 else kwargs["inputs"]
    return {"train_tokens": int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())}


def _install_timers() -> None:
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            REC.steps[state.global_step - 1]["step_s"] += time.perf_counter() - self.t0
            # peak over the training steps, before the final save/merge
            REC.extra["cpu_max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            if torch.cuda.is_available():
                REC.extra["gpu_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
                REC.extra["gpu_max_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30

    init = GRPOTrainer.__init__

    @functools.wraps(init)
    def init_with_clock(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(StepClock())

    GRPOTrainer.__init__ = init_with_clock

    # The project's ThroughputCallback writes tokens/s (TRL's num_tokens counter) into the logs dict that callbacks
    # see; keep its last values as a cross-check of the timers here.
    from skinflow.rl.grpo import ThroughputCallback

    on_log = ThroughputCallback.on_log

    @functools.wraps(on_log)
    def on_log_recorded(self, args, state, control, logs=None, **kwargs):
        on_log(self, args, state, control, logs=logs, **kwargs)
        for key in ("tokens_per_second", "mfu"):
            if logs and key in logs:
                REC.extra[f"throughput_callback_{key}"] = logs[key]

    ThroughputCallback.on_log = on_log_recorded
    GRPOTrainer._generate_single_turn = _timed("generate", _generation_counts)(GRPOTrainer._generate_single_turn)
    GRPOTrainer._prepare_inputs = _timed("rollout")(GRPOTrainer._prepare_inputs)
    GRPOTrainer.compute_loss = _timed("loss_forward", _loss_counts)(GRPOTrainer.compute_loss)
    GRPOTrainer.training_step = _timed("training_step")(GRPOTrainer.training_step)


def run_variant(spec: dict) -> dict:
    import pandas as pd

    from skinflow.model.fdlinear import DVEConfig
    from skinflow.model.policy import LoraSettings
    from skinflow.rl.grpo import PEAK_FLOPS, Stage1Config, Stage2Config, run_grpo

    _install_timers()
    root = Path(spec["workspace"])
    cls = Stage1Config if spec["stage"] == "stage1" else Stage2Config
    cfg = cls(max_steps=spec["steps"], prompts_per_step=spec["prompts"], num_generations=spec["generations"],
              train_limit=spec["prompts"] * spec["steps"], max_completion_length=spec["completion_tokens"],
              beta=spec["beta"], gradient_checkpointing=spec["gradient_checkpointing"],
              save_steps=spec["steps"] + 1,  # no checkpoint: a 7B full-FT checkpoint with optimizer is ~50 GB
              work_dir=str(root / "work" / spec["name"]), seed=0,
              dve=DVEConfig(enabled=spec["dve"]), lora=LoraSettings(enabled=spec["lora"]))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    out_dir = root / "out" / spec["name"]
    started = time.perf_counter()
    summary = run_grpo(spec["stage"], str(root / "model"), str(out_dir), pd.read_parquet(root / "manifest.parquet"),
                       pd.read_parquet(root / "captions.parquet"), pd.read_csv(root / "taxonomy.csv"), cfg)
    wall = time.perf_counter() - started
    shutil.rmtree(out_dir, ignore_errors=True)

    steps = sorted(REC.steps)
    measured = [REC.steps[s] for s in (steps[1:] if len(steps) > 1 else steps)]  # step 0 warms up

    def mean(key: str) -> float:
        return statistics.mean(r[key] for r in measured)

    n = summary["parameters"]
    peak = PEAK_FLOPS.get("cuda") if torch.cuda.is_available() else None
    train_s = mean("training_step_s") - mean("rollout_s")
    row = {
        "name": spec["name"], "dve": spec["dve"], "lora": spec["lora"], "parameters": n,
        "trainable_parameters": summary["trainable_parameters"], "steps_measured": len(measured),
        "step_s": mean("step_s"), "step_s_each": [round(REC.steps[s]["step_s"], 3) for s in steps],
        "rollout_s": mean("rollout_s"), "generate_s": mean("generate_s"),
        "train_s": train_s, "train_forward_s": mean("loss_forward_s"),
        "train_backward_s": train_s - mean("loss_forward_s"), "optimizer_s": mean("step_s") - mean("training_step_s"),
        "completion_tokens_per_step": mean("completion_tokens"), "prompt_tokens_per_step": mean("prompt_tokens"),
        "train_tokens_per_step": mean("train_tokens"),
        "generation_tokens_per_s": mean("completion_tokens") / mean("generate_s"),
        "training_tokens_per_s": mean("train_tokens") / train_s,
        "wall_s_including_load_and_save": wall,
        # TRL's own step timer (training_step only, no optimizer step) as a cross-check of the clock above
        "trl_step_time_s": next((h["step_time"] for h in reversed(summary["history"]) if "step_time" in h), None),
        **REC.extra,
    }
    if peak:
        row["mfu_train"] = 6 * n * row["training_tokens_per_s"] / peak
        row["mfu_generation"] = 2 * n * row["generation_tokens_per_s"] / peak
        row["mfu_step"] = 6 * n * mean("train_tokens") / row["step_s"] / peak
    return row


# ----------------------------------------------------------------------------------------------------------- driver
def _launch(spec: dict, timeout: int) -> dict:
    """Run one task in a fresh interpreter: the parent never holds model memory (or a CUDA context) itself."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # keep a caller's path
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"failed": f"timeout after {timeout} s", "log_tail": str(exc.stdout or "")[-1500:]}
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stdout + proc.stderr)[-1500:]
        oom = "out of memory" in tail.lower()
        return {"failed": "out of memory" if oom else f"exit {proc.returncode}", "log_tail": tail}
    return json.loads(line.removeprefix("RESULT "))


def _worker(spec: dict) -> dict:
    if spec["task"] == "build":
        return build_model(Path(spec["workspace"]) / "model", spec["shape"], spec["image_size"], spec["labels"])
    return run_variant(spec)


def prepare_workspace(root: Path, shape: dict, image_size: int, timeout: int) -> dict:
    """Data and model under `root`; reused when `root` already holds a build of the same shape and image size."""
    import pandas as pd

    marker = root / "workspace.json"
    wanted = {"shape": shape, "image_size": image_size}
    if marker.exists():
        built = json.loads(marker.read_text())
        if {k: built.get(k) for k in wanted} == wanted:
            print(f"reusing the workspace at {root}", flush=True)
            return built["model"]
    # The data does not depend on the model shape: a workspace prepared elsewhere (e.g. on a CPU machine,
    # so a GPU machine needs no validation stack) keeps its data and only gets the model built.
    if not all((root / name).exists() for name in ("manifest.parquet", "captions.parquet", "taxonomy.csv")):
        build_data(root)
    labels = sorted(pd.read_csv(root / "taxonomy.csv")["label"])
    info = _launch({"task": "build", "workspace": str(root), "shape": shape, "image_size": image_size,
                    "labels": labels}, timeout)
    if "failed" in info:
        raise SystemExit(f"building the model failed ({info['failed']}):\n{info['log_tail']}")
    marker.write_text(json.dumps({**wanted, "model": info}, indent=2))
    return info


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="reduced shapes (CPU)")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per variant; the first is a warm-up")
    ap.add_argument("--stage", choices=["stage1", "stage2"], default="stage1")
    ap.add_argument("--prompts", type=int, help="prompts per step (default 4, smoke 2)")
    ap.add_argument("--generations", type=int, help="GRPO group size (default 4, smoke 2)")
    ap.add_argument("--completion-tokens", type=int, help="max completion length (default 128, smoke 16)")
    ap.add_argument("--image-size", type=int, help="images are resized to this area (default 448 = 256 merged "
                                                   "tokens, smoke 112 = 16)")
    ap.add_argument("--beta", type=float, default=0.02, help="KL coefficient (0 drops the reference model)")
    ap.add_argument("--no-gradient-checkpointing", action="store_true")
    ap.add_argument("--variants", default="all", help="comma list of names like dve-off_full,dve-on_lora")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per variant")
    ap.add_argument("--keep", type=Path, help="build the workspace here and keep it for later runs, which reuse it "
                                              "(default: a temp dir, removed); e.g. one variant per call")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(_worker(json.loads(args.worker))), flush=True)
        return

    from skinflow.rl.grpo import PEAK_FLOPS

    shape = SHAPES["smoke" if args.smoke else "full"]
    device, dtype = _device_dtype()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_grpo_"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_info = prepare_workspace(root, shape, args.image_size or (112 if args.smoke else 448), args.timeout)
    print(f"device={device} dtype={dtype} threads={torch.get_num_threads()} model {model_info['parameters']:,} "
          f"parameters ({model_info['vision_parameters']:,} vision); workspace ready in "
          f"{time.perf_counter() - t0:.0f} s at {root}", flush=True)
    common = {"workspace": str(root), "stage": args.stage, "steps": args.steps, "beta": args.beta,
              "prompts": args.prompts or (2 if args.smoke else 4),
              "generations": args.generations or (2 if args.smoke else 4),
              "completion_tokens": args.completion_tokens or (16 if args.smoke else 128),
              "gradient_checkpointing": not args.no_gradient_checkpointing}
    name = "cpu" if device == "cpu" else torch.cuda.get_device_name(0).replace(" ", "_")
    out = REPO / f"benchmarks/results/grpo_step_{name}{'_smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": device, "device_name": name, "dtype": str(dtype), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "platform": platform.platform(), "smoke": args.smoke, "shape": shape,
            **model_info, **{k: v for k, v in common.items() if k != "workspace"},
            "peak_flops": PEAK_FLOPS["cuda"] if device == "cuda" else None}
    previous = []
    if out.exists() and args.variants != "all":  # a partial run (one variant per call) adds to a matching file
        old = json.loads(out.read_text())
        same = {k: old["meta"].get(k) for k in common if k != "workspace"} == \
            {k: v for k, v in common.items() if k != "workspace"} and old["meta"].get("shape") == shape \
            and old["meta"].get("threads") == torch.get_num_threads()
        previous = old["results"] if same else []
    names = {f"dve-{'on' if v['dve'] else 'off'}_{'lora' if v['lora'] else 'full'}": v for v in VARIANTS}
    wanted = list(names) if args.variants == "all" else args.variants.split(",")  # run in the order given
    rows = []
    for name in wanted:
        v = names[name]
        row = {"name": name, **v, **_launch({**common, **v, "name": name, "task": "variant"}, args.timeout)}
        rows.append(row)
        # written after every variant: a run stopped by an outer time limit keeps what it measured
        kept = [r for r in previous if r["name"] not in {r["name"] for r in rows}] + rows
        out.write_text(json.dumps({"meta": {**meta, "loadavg_after": os.getloadavg()}, "results": kept},
                                  indent=2) + "\n")
        if "failed" in row:
            print(f"{name:>13}: FAILED ({row['failed']})\n{row['log_tail'][-600:]}", flush=True)
            continue
        mem = row.get("gpu_max_allocated_gib", row["cpu_max_rss_gib"])
        print(f"{name:>13}: step {row['step_s']:.2f} s (rollout {row['rollout_s']:.2f}, of it generate "
              f"{row['generate_s']:.2f}; train {row['train_s']:.2f}; optimizer {row['optimizer_s']:.2f}) | "
              f"gen {row['generation_tokens_per_s']:,.1f} tok/s | train {row['training_tokens_per_s']:,.1f} tok/s | "
              f"peak {'GPU' if 'gpu_max_allocated_gib' in row else 'RSS'} {mem:.2f} GiB | MFU train "
              f"{_fmt(row.get('mfu_train'), '.3f')} gen {_fmt(row.get('mfu_generation'), '.4f')} | trainable "
              f"{row['trainable_parameters']:,}", flush=True)
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    ok = {r["name"]: r for r in rows if "failed" not in r}
    if "dve-off_full" in ok and "dve-on_full" in ok:
        print(f"DVE on / off step time (full fine-tuning): "
              f"{ok['dve-on_full']['step_s'] / ok['dve-off_full']['step_s']:.2f}x")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
