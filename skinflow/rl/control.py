"""No-update control for a GRPO run: the frozen starting policy answers each step's prompts too.

A run's mean reward can rise for reasons other than learning (the order in which prompts arrive: a near-frozen run
rose almost as much), so the policy's reward alone says little. At every ``control_every``-th optimizer step the
starting policy -- the model as loaded before any update -- samples as many completions for the same prompts and
images, with the same generation settings, and the same reward functions score them. Two columns join that step's
log line (and so ``state.log_history`` and the per-step CSV):

    control_reward  mean total reward of the control's completions (TRL's ``reward`` formula: weighted sum of the
                    reward functions, rows where every function returned None left out)
    reward_gain     the step's policy ``reward`` - ``control_reward``

At step 1 the policy still equals the control, so the gain there is 0 up to sampling noise.

Which model is the control: with ``beta > 0`` and no PEFT, TRL already holds a KL reference equal to the starting
policy (``align_reference``) and it is reused. Otherwise (``beta == 0``, or LoRA, where TRL has no reference model)
``frozen_copy`` copies the prepared model before the trainer is built. The copy must be taken then: TRL replaces
``model.forward`` by a wrapper bound to that very model, so a copy taken afterwards would still run the policy.

Randomness: the control samples inside ``torch.random.fork_rng`` from a generator seeded by (seed, step), so the
policy's random stream is untouched -- the same seed gives the same policy weights with the control on or off -- and
the control's numbers depend only on the seed and the step (a resumed run recomputes them identically).

Hook: TRL 1.16 calls ``GRPOTrainer._calculate_rewards(inputs, prompts, completions, completion_ids)`` once per
generation batch, with the dataset rows (the reward functions' keyword columns) and the prompts exactly as they were
rendered for generation (images inserted). ``attach_control`` wraps that one method on the trainer instance; the
policy's rewards pass through unchanged. Only synchronous, non-model reward functions are supported.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import numpy as np
import torch

CONTROL_COLUMNS = ("control_reward", "reward_gain")
N_BOOT = 2000


def needs_copy(model, beta: float) -> bool:
    """True when TRL will hold no reference model (beta == 0, or a PEFT model) and the control needs its own."""
    from accelerate.utils import is_peft_model

    return beta == 0 or is_peft_model(model)


def frozen_copy(model):
    """An eval-mode, gradient-free copy of ``model`` as it is now; a PEFT model comes back merged (same outputs)."""
    frozen = copy.deepcopy(model)
    if hasattr(frozen, "merge_and_unload"):
        frozen = frozen.merge_and_unload()
    frozen.requires_grad_(False)
    return frozen.eval()


def step_seed(seed: int, step: int) -> int:
    """Seed of the control's sampling at 1-based optimizer ``step`` of a run with ``seed``."""
    return int(np.random.SeedSequence([seed, step, 0x5EED]).generate_state(1)[0])


def mean_total(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> float:
    """TRL's logged ``reward``: weighted row sums, rows where every function gave None (NaN) left out, then mean."""
    totals = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    totals[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return torch.nanmean(totals).item()


class RewardControl:
    """Wraps ``trainer._calculate_rewards`` to log ``control_reward`` and ``reward_gain`` every ``every`` steps."""

    def __init__(self, trainer, every: int, seed: int, frozen=None):
        if every < 1:
            raise ValueError("control every must be >= 1 (0 means no control: do not attach one)")
        for func in trainer.reward_funcs:
            if isinstance(func, torch.nn.Module) or inspect.iscoroutinefunction(func):
                raise ValueError("the reward control supports synchronous, non-model reward functions only")
        self.trainer, self.every, self.seed = trainer, every, seed
        if trainer.ref_model is not None:
            self.model, self.source = trainer.ref_model, "reference"
            _check_starting_policy(self.model, trainer.accelerator.unwrap_model(trainer.model))
        elif frozen is not None:  # copied before the trainer moved the policy to its device
            self.model, self.source = frozen.to(trainer.accelerator.device), "copy"
        else:
            raise ValueError("the trainer holds no reference model: pass a frozen_copy taken before the trainer")
        self._policy_rewards = trainer._calculate_rewards
        trainer._calculate_rewards = self._calculate_rewards  # instance attribute shadows the method

    def due(self, global_step: int) -> bool:
        """Whether the step now being generated (``global_step + 1``, 1-based) gets a control: 1, 1+every, ..."""
        return global_step % self.every == 0

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = self._policy_rewards(inputs, prompts, completions, completion_ids_list)
        trainer = self.trainer
        if trainer.model.training and self.due(trainer.state.global_step):
            control = self.control_reward(inputs, prompts)
            policy = mean_total(rewards_per_func, trainer.reward_weights)
            metrics = trainer._metrics["train"]  # averaged into the step's log line by GRPOTrainer.log
            metrics["control_reward"].append(control)
            metrics["reward_gain"].append(policy - control)
        return rewards_per_func

    def control_reward(self, inputs: list[dict], prompts: list) -> float:
        """Sample one completion per rollout prompt from the frozen model and return their mean total reward."""
        trainer = self.trainer
        device = trainer.accelerator.device
        step = trainer.state.global_step + 1
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
            seed = step_seed(self.seed, step)
            torch.random.default_generator.manual_seed(seed)
            if device.type == "cuda":
                torch.cuda.manual_seed(seed)  # the current device only, the one fork_rng restores
            prompt_ids, _, multimodal = trainer._tokenize_prompts(copy.deepcopy(prompts))
            completion_ids = self._sample(prompt_ids, multimodal)
        completions = _decode(trainer, prompts, prompt_ids, completion_ids)
        return mean_total(self._score(inputs, prompts, completions, completion_ids), trainer.reward_weights)

    def _sample(self, prompt_ids: list, multimodal: dict) -> list[list[int]]:
        """TRL's plain ``generate`` rollout (left padding, cut after the first EOS) on the frozen model."""
        from trl.models import unwrap_model_for_generation
        from trl.trainer.utils import pad

        trainer = self.trainer
        device, multiple = trainer.accelerator.device, trainer.pad_to_multiple_of
        prompts = [torch.tensor(ids) for ids in prompt_ids]
        batch = {"input_ids": pad(prompts, trainer._tokenizer.pad_token_id, "left", multiple),
                 "attention_mask": pad([torch.ones_like(t) for t in prompts], 0, "left", multiple)}
        for key, value in multimodal.items():
            if isinstance(value, torch.Tensor):
                batch[key] = value
            elif isinstance(value, list) and value and isinstance(value[0], list):
                batch[key] = pad([torch.tensor(x) for x in value], 0, "left", multiple)
            else:
                batch[key] = torch.tensor(np.array(value))
        batch = {k: v.to(device) for k, v in batch.items()}
        with (unwrap_model_for_generation(self.model, trainer.accelerator,
                                          generation_kwargs=getattr(trainer, "generation_kwargs", None)) as model,
              torch.no_grad()):
            out = model.generate(**batch, generation_config=_generation_config(trainer))
        completion = out[:, batch["input_ids"].size(1):].cpu()
        eos = torch.isin(completion, torch.tensor(trainer.eos_token_ids))
        ends = torch.where(eos.any(dim=1), eos.int().argmax(dim=1), completion.size(1))
        return [row[: end + 1].tolist() for row, end in zip(completion, ends.tolist())]

    def _score(self, inputs: list[dict], prompts: list, completions: list, completion_ids: list) -> torch.Tensor:
        """(rollouts, reward functions) like TRL's, without its logging hooks (the control logs nothing else)."""
        from accelerate.utils import gather

        trainer = self.trainer
        columns = [k for k in inputs[0] if k not in ("prompt", "completion", "completion_ids")]
        kwargs: dict[str, Any] = {k: [row[k] for row in inputs] for k in columns}
        table = torch.full((len(prompts), len(trainer.reward_funcs)), torch.nan)
        for i, func in enumerate(trainer.reward_funcs):
            out = func(prompts=prompts, completions=completions, completion_ids=completion_ids,
                       trainer_state=trainer.state, **kwargs)
            table[:, i] = torch.tensor([math.nan if r is None else float(r) for r in out])
        return gather(table.to(trainer.accelerator.device))


def _generation_config(trainer):
    """The trainer's own sampling config; with vLLM rollouts (no HF config) the same settings for HF generate."""
    config = getattr(trainer, "generation_config", None)
    if config is not None:
        return config
    from transformers import GenerationConfig

    kwargs = {"max_new_tokens": trainer.max_completion_length, "do_sample": True,
              "pad_token_id": trainer._tokenizer.pad_token_id, "eos_token_id": trainer.eos_token_ids,
              "temperature": trainer.temperature, "top_p": trainer.top_p, "top_k": trainer.top_k,
              "min_p": trainer.min_p, "repetition_penalty": trainer.repetition_penalty}
    if trainer._is_vlm:
        kwargs["suppress_tokens"] = [trainer.model.config.image_token_id]
    return GenerationConfig(**kwargs, **(trainer.args.generation_kwargs or {}))


def _decode(trainer, prompts: list, prompt_ids: list, completion_ids: list) -> list:
    """Completions in the form TRL hands to reward functions (chat messages for conversational prompts)."""
    from trl.data_utils import is_conversational

    if not is_conversational({"prompt": prompts[0]}):
        return trainer.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
    tokenizer = trainer._tokenizer
    if any(getattr(tokenizer, name, None) is not None for name in ("response_template", "response_schema")):
        from trl.chat_template_utils import parse_response

        return [[parse_response(tokenizer, ids, prefix=prompt_ids[i], tools=trainer.tools)]
                for i, ids in enumerate(completion_ids)]
    contents = trainer.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
    return [[{"role": "assistant", "content": content}] for content in contents]


def _check_starting_policy(reference, policy) -> None:
    """The reused KL reference must hold the policy's weights before any update (``align_reference``)."""
    ref_state, pol_state = reference.state_dict(), policy.state_dict()
    if ref_state.keys() != pol_state.keys() or not all(torch.equal(ref_state[k], pol_state[k].to(ref_state[k].device))
                                                       for k in pol_state):
        raise RuntimeError("TRL's reference model differs from the starting policy; the control would compare "
                           "the policy with another model")


def attach_control(trainer, every: int, seed: int, frozen=None) -> RewardControl | None:
    """Log the frozen starting policy's reward beside the policy's every ``every`` steps (0 = no control)."""
    return RewardControl(trainer, every, seed, frozen) if every else None


def third_means(values) -> tuple[float, float] | None:
    """Means of the first and the last third (``max(1, n // 3)`` values) of a logged series, rounded."""
    series = np.asarray(values, dtype=float)
    if not len(series):
        return None
    third = max(1, len(series) // 3)
    return _round(series[:third].mean()), _round(series[-third:].mean())


def control_summary(history: list[dict], seed: int, n_boot: int = N_BOOT) -> dict | None:
    """Control and gain over a run's logged steps; None when no step has a control.

    ``gain_ci_low``/``gain_ci_high``: percentile bootstrap 95% CI of the mean gain over the last third of the steps
    (steps resampled with ``np.random.default_rng(seed)``). Thirds are ``max(1, n // 3)`` steps, as for ``reward``.
    """
    rows = [h for h in history if _finite(h.get("control_reward")) and _finite(h.get("reward_gain"))]
    if not rows:
        return None
    control = np.array([h["control_reward"] for h in rows], dtype=float)
    gain = np.array([h["reward_gain"] for h in rows], dtype=float)
    last = gain[-max(1, len(rows) // 3):]
    draws = np.random.default_rng(seed).integers(0, len(last), size=(n_boot, len(last)))
    low, high = np.percentile(last[draws].mean(axis=1), [2.5, 97.5])
    first_control, last_control = third_means(control)
    return {"steps": len(rows), "reward_first_third": first_control,
            "reward_last_third": last_control, "gain_mean": _round(gain.mean()),
            "gain_last_third": _round(last.mean()), "gain_ci_low": _round(low), "gain_ci_high": _round(high)}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _round(value: float) -> float:
    return round(float(value), 4)
