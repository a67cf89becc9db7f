"""FDLinear: exactness at init, band algebra, gradients, per-image dynamics, Qwen2.5-VL conversion, save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from skinflow.model.fdlinear import (
    PROJECTIONS,
    DVEConfig,
    FDLinear,
    _CachedBases,
    _DynamicProject,
    _band_masks,
    _spectrum_to_bases,
    clear_basis_cache,
    convert_vision_tower,
    dve_param_groups,
    find_vision_tower,
    load_dve_model,
    set_basis_cache,
)

transformers = pytest.importorskip("transformers")
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (  # noqa: E402
    Qwen2_5_VisionTransformerPretrainedModel,
)

IMG, START, END = 290, 292, 293


def _fd(in_f=24, out_f=20, k=4, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f)
    return lin, FDLinear.from_linear(lin, num_bands=k)


def _randomise_heads(module: nn.Module, scale: float = 0.5, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for fd in [m for m in module.modules() if isinstance(m, FDLinear)]:
            for gate in (fd.head.in_gate, fd.head.out_gate, fd.head.band_gate):
                gate.weight.copy_(torch.randn(gate.weight.shape, generator=g) * scale)
                gate.bias.copy_(torch.randn(gate.bias.shape, generator=g) * scale)


# ----------------------------------------------------------------------------------------------------------- layer
def test_exact_at_init_single_batch_and_packed():
    lin, fd = _fd()
    x = torch.randn(37, 24)
    assert (fd(x) - lin(x)).abs().max() < 1e-4  # one image, no boundaries
    xb = torch.randn(3, 11, 24)
    assert (fd(xb) - lin(xb)).abs().max() < 1e-4  # (B, T, I)
    fd.segment_lengths = (5, 20, 12)
    assert (fd(x) - lin(x)).abs().max() < 1e-4  # packed images
    assert (fd.to_linear()(x) - lin(x)).abs().max() < 1e-4


def test_autocast_computes_in_autocast_dtype():
    lin, fd = _fd()
    fd.segment_lengths = (5, 11)
    x = torch.randn(16, 24, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ref = fd(x), lin(x)
    assert y.dtype == torch.bfloat16 and (y.float() - ref.float()).abs().max() < 5e-2
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and fd.spectrum.grad.abs().sum() > 0


def test_bands_orthogonal_and_sum_to_weight():
    lin, fd = _fd(in_f=32, out_f=48)
    bases = fd.band_bases()
    assert bases.shape == (4, 48, 32)
    assert (bases.sum(0) - lin.weight).abs().max() < 1e-5
    gram = torch.einsum("koi,joi->kj", bases, bases)
    off = gram - torch.diag(torch.diagonal(gram))
    assert off.abs().max() < 1e-5 * gram.diagonal().max()
    assert (gram.diagonal() > 0).all()


def test_bands_when_k_does_not_divide_positions():
    lin, fd = _fd(in_f=10, out_f=7, k=4)  # 7 * 6 = 42 positions, 42 / 4 is not an integer
    sizes = fd.band_sizes()
    assert sum(sizes) == 42 and min(sizes) > 0 and max(sizes) - min(sizes) <= 4
    assert (fd.band_bases().sum(0) - lin.weight).abs().max() < 1e-5
    x = torch.randn(9, 10)
    assert (fd(x) - lin(x)).abs().max() < 1e-4


@settings(max_examples=25, deadline=None)
@given(o=st.integers(1, 17), i=st.integers(1, 17), k=st.integers(1, 6), data=st.data())
def test_band_properties(o, i, k, data):
    positions = o * (i // 2 + 1)
    k = min(k, positions)
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    w = torch.randn(o, i, dtype=torch.float64)
    lin = nn.Linear(i, o, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(w)
    bases = FDLinear.from_linear(lin, k).band_bases()
    assert torch.allclose(bases.sum(0), w, atol=1e-10)
    gram = torch.einsum("koi,joi->kj", bases, bases)
    assert (gram - torch.diag(gram.diagonal())).abs().max() < 1e-9 * max(1.0, gram.diagonal().max().item())


def test_bad_band_count_and_input_shape():
    with pytest.raises(ValueError):
        FDLinear(4, 3, num_bands=100)  # only 3 * 3 = 9 positions
    _, fd = _fd()
    with pytest.raises(ValueError):
        fd(torch.randn(2, 3, 4, 24))
    fd.segment_lengths = (3, 3)
    with pytest.raises(RuntimeError):
        fd(torch.randn(7, 24))
    fd.segment_lengths, fd.require_segments = None, True
    with pytest.raises(RuntimeError):
        fd(torch.randn(7, 24))


def test_gradients_reach_spectrum_and_head():
    _, fd = _fd()
    fd.segment_lengths = (6, 10)
    fd(torch.randn(16, 24)).pow(2).sum().backward()
    assert fd.spectrum.grad.abs().sum() > 0 and fd.bias.grad.abs().sum() > 0
    for gate in (fd.head.in_gate, fd.head.out_gate, fd.head.band_gate):
        assert gate.weight.grad.abs().sum() > 0 and gate.bias.grad.abs().sum() > 0
    # A feeds only the zero-initialised gates, so its first gradient is exactly zero
    assert fd.head.reduce.weight.grad.abs().sum() == 0
    _randomise_heads(fd)
    fd.zero_grad()
    fd(torch.randn(16, 24)).pow(2).sum().backward()
    assert fd.head.reduce.weight.grad.abs().sum() > 0


def test_custom_backward_matches_gradcheck():
    torch.manual_seed(0)
    d = dict(dtype=torch.double, requires_grad=True)
    x = torch.randn(9, 6, **d)
    c = (torch.rand(3, 6, **d) + 0.5).detach().requires_grad_()
    f = (torch.rand(3, 5, **d) + 0.5).detach().requires_grad_()
    beta, bases = torch.rand(3, 3, **d), torch.randn(3, 5, 6, **d)
    assert torch.autograd.gradcheck(lambda *a: _DynamicProject.apply(*a, (2, 4, 3)), (x, c, f, beta, bases))


def test_layer_gradients_match_autograd_reference():
    _, fd = _fd()
    _randomise_heads(fd)
    fd.segment_lengths = (6, 10)
    x = torch.randn(16, 24, requires_grad=True)

    def reference(x):  # plain autograd through the dense per-image weights
        w = fd.dynamic_weights(x)
        ys = [seg @ wn.T for seg, wn in zip(x.split(fd.segment_lengths), w)]
        return torch.cat(ys) + fd.bias

    params = [x, fd.spectrum, *fd.head.parameters()]
    g_fd = torch.autograd.grad(fd(x).sin().sum(), params)
    g_ref = torch.autograd.grad(reference(x).sin().sum(), params)
    for a, b in zip(g_fd, g_ref):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_per_image_independence():
    _, fd = _fd()
    _randomise_heads(fd)
    fd.segment_lengths = (8, 12)
    x = torch.randn(20, 24)
    w = fd.dynamic_weights(x)
    assert (w[0] - w[1]).abs().max() > 1e-3  # different images, different weights
    y = fd(x)
    x2 = x.clone()
    x2[8:] = torch.randn(12, 24) * 3
    y2 = fd(x2)
    assert torch.equal(y[:8], y2[:8]) or (y[:8] - y2[:8]).abs().max() < 1e-6
    assert (y[8:] - y2[8:]).abs().max() > 1e-2


def test_parameter_accounting_at_qwen_mlp_shape():
    fd = FDLinear(1280, 3420, device="meta")
    assert fd.dense_params == 3420 * 1280
    assert fd.spectral_params == 3420 * 641 * 2 > fd.dense_params
    hidden = 80
    assert fd.head_params == 1280 * hidden + hidden + (hidden * 1280 + 1280) + (hidden * 3420 + 3420) + (hidden * 4 + 4)
    assert 10 < fd.overhead_pct < 12


# ----------------------------------------------------------------------------------------------------------- Qwen2.5-VL
def _tiny_config() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1, 3], window_size=56, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0)),
        image_token_id=IMG, video_token_id=291, vision_start_token_id=START, vision_end_token_id=END,
    )


def _tiny_model(seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(_tiny_config()).eval()


def _images(grids=((1, 8, 8), (1, 12, 8)), seed: int = 0):
    grid = torch.tensor(grids)
    torch.manual_seed(seed)
    return torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 14 * 14), grid


def _prompt(grid):
    ids = [5]
    for t, h, w in grid.tolist():
        ids += [START] + [IMG] * (t * h * w // 4) + [END, 7]
    ids = torch.tensor([ids])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": (ids == IMG).int()}


def test_tower_exact_at_init_packed_images_of_different_sizes():
    model = _tiny_model()
    tower = find_vision_tower(model)
    reference = copy.deepcopy(tower)
    report = convert_vision_tower(model, {"num_bands": 4})
    assert len(report.layers) == 4 * len(PROJECTIONS) == sum(isinstance(m, FDLinear) for m in tower.modules())
    assert type(tower.merger.mlp[0]) is nn.Linear  # the patch merger is outside the blocks and left alone
    pixels, grid = _images()
    with torch.no_grad():
        out, ref = tower(pixels, grid_thw=grid), reference(pixels, grid_thw=grid)
    assert (out.pooler_output - ref.pooler_output).abs().max() < 1e-4
    assert (out.last_hidden_state - ref.last_hidden_state).abs().max() < 1e-4


def test_every_block_sees_image_boundaries_not_windows():
    model = _tiny_model()
    convert_vision_tower(model, {})
    tower = find_vision_tower(model)
    seen = []
    for blk in tower.blocks:  # window blocks (0, 2) and full-attention blocks (1, 3)
        blk.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(m.segment_lengths))
    pixels, grid = _images()
    with torch.no_grad():
        tower(pixels, grid_thw=grid)
    assert seen == [(64, 96)] * 4
    assert all(m.segment_lengths is None for m in tower.modules() if isinstance(m, FDLinear))  # cleared after use
    with pytest.raises(RuntimeError):  # a block called without the tower has no boundaries: loud, not silent
        tower.blocks[0].mlp(torch.randn(160, 32))


def test_tower_images_stay_independent_with_dynamic_heads():
    model = _tiny_model()
    convert_vision_tower(model, {})
    tower = find_vision_tower(model)
    _randomise_heads(tower)
    pixels, grid = _images()
    pixels2 = pixels.clone()
    pixels2[64:] = torch.randn(96, pixels.shape[1])
    with torch.no_grad():
        a, b = tower(pixels, grid_thw=grid).pooler_output, tower(pixels2, grid_thw=grid).pooler_output
        alone = tower(pixels[:64], grid_thw=grid[:1]).pooler_output
    assert (a[:16] - b[:16]).abs().max() < 1e-5  # image 1 unaffected by image 2
    assert (a[:16] - alone).abs().max() < 1e-5  # and identical to encoding it alone
    assert (a[16:] - b[16:]).abs().max() > 1e-3


def test_gradient_checkpointing_recompute_keeps_boundaries():
    model = _tiny_model()
    convert_vision_tower(model, {})
    tower = find_vision_tower(model).train()
    _randomise_heads(tower)
    pixels, grid = _images()

    def grads():
        tower.zero_grad()
        tower(pixels, grid_thw=grid).pooler_output.pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}

    calls = []
    tower.blocks[0].mlp.up_proj.register_forward_pre_hook(lambda m, a: calls.append(m.segment_lengths))
    plain = grads()
    tower.activation_checkpointing_enable()
    checkpointed = grads()
    assert calls == [(64, 96)] * 3  # once without checkpointing, forward + backward-time recompute with it
    assert plain.keys() == checkpointed.keys() and any("spectrum" in n for n in plain)
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6, rtol=1e-4), name


def test_full_model_forward_and_generate():
    model, reference = _tiny_model(), _tiny_model()
    convert_vision_tower(model, {})
    pixels, grid = _images()
    inputs = {**_prompt(grid), "pixel_values": pixels, "image_grid_thw": grid}
    with torch.no_grad():
        assert (model(**inputs).logits - reference(**inputs).logits).abs().max() < 1e-4
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, reference.generate(**inputs, max_new_tokens=4, do_sample=False))
    _randomise_heads(model)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 4)


def test_save_load_round_trip(tmp_path):
    model = _tiny_model()
    # converted through the tower alone: the config lands in config.vision_config.dve
    dve = {"blocks": [0, 3], "projections": ["qkv", "down_proj"], "num_bands": 3}
    convert_vision_tower(find_vision_tower(model), dve)
    _randomise_heads(model)
    model.save_pretrained(tmp_path)
    loaded = load_dve_model(tmp_path).eval()
    assert DVEConfig.model_validate(loaded.config.vision_config.dve).num_bands == 3
    tower = find_vision_tower(loaded)
    assert isinstance(tower.blocks[3].attn.qkv, FDLinear) and type(tower.blocks[1].attn.qkv) is nn.Linear
    pixels, grid = _images()
    inputs = {**_prompt(grid), "pixel_values": pixels, "image_grid_thw": grid}
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    loaded.save_pretrained(tmp_path / "again")  # a loaded model saves and loads again
    assert isinstance(find_vision_tower(load_dve_model(tmp_path / "again")).blocks[0].mlp.down_proj, FDLinear)


def test_config_selection_report_and_param_groups():
    model = _tiny_model()
    with pytest.raises(ValueError):
        DVEConfig(projections=["q_proj"])
    with pytest.raises(ValueError):
        convert_vision_tower(model, {"blocks": [7]})
    assert convert_vision_tower(model, {"enabled": False}).layers == []
    assert not any(isinstance(m, FDLinear) for m in model.modules())
    report = convert_vision_tower(model, {"blocks": [1], "projections": ["gate_proj", "proj"]})
    assert [r.name for r in report.layers] == ["blocks.1.mlp.gate_proj", "blocks.1.attn.proj"]
    gate = report.layers[0]
    assert (gate.dense_params, gate.spectral_params) == (64 * 32, 64 * 17 * 2)
    assert gate.head_params == 32 * 16 + 16 + (16 * 32 + 32) + (16 * 64 + 64) + (16 * 4 + 4)
    assert report.added_params == sum(r.spectral_params + r.head_params - r.dense_params for r in report.layers) > 0
    assert model.config.dve["blocks"] == [1]
    tower = find_vision_tower(model)
    assert isinstance(tower.blocks[1].mlp.gate_proj, FDLinear) and type(tower.blocks[0].mlp.gate_proj) is nn.Linear
    assert len(convert_vision_tower(model, {"blocks": [1], "projections": ["gate_proj", "proj"]}).layers) == 2
    groups = dve_param_groups(model, lr=1e-4, head_lr_scale=10.0)
    assert groups[1]["lr"] == 1e-3 and len(groups[1]["params"]) == 2 * 8
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# ---------------------------------------------------------------------------------------------------------- basis cache
def _count_rebuilds(fd: FDLinear) -> list[int]:
    calls = []
    rebuild = fd.band_bases

    def counted():
        calls.append(1)
        return rebuild()

    fd.band_bases = counted
    return calls


def _grads(fd: FDLinear, x: Tensor, passes: int = 1, autocast: bool = False) -> list[Tensor]:
    fd.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = sum(fd(x).float().sin().sum() for _ in range(passes))  # several graphs share one cached basis
    loss.backward()
    return [x.grad, fd.spectrum.grad, fd.bias.grad, *(p.grad for p in fd.head.parameters())]


def test_cached_bases_adjoint_passes_gradcheck():
    torch.manual_seed(0)
    for o, i in ((5, 6), (7, 9), (4, 2)):  # even and odd input widths: different mirrored-column counts
        masks = _band_masks(o, i, 3, torch.device("cpu"))
        theta = torch.randn(o, i // 2 + 1, 2, dtype=torch.double, requires_grad=True)
        # the forward value comes from outside autograd (as from the cache); only the explicit adjoint gives gradients
        def apply(t):
            return _CachedBases.apply(t, _spectrum_to_bases(t.detach(), masks, 3, (o, i)), masks, 3)

        assert torch.autograd.gradcheck(apply, (theta,))


def test_cached_forward_equals_uncached_and_rebuilds_once():
    _, fd = _fd()
    _randomise_heads(fd)
    fd.segment_lengths = (6, 10)
    x = torch.randn(16, 24)
    fd.cache_bases = False
    with torch.no_grad():
        reference = fd(x)
    fd.cache_bases = True
    calls = _count_rebuilds(fd)
    with torch.no_grad():
        outs = [fd(x) for _ in range(3)]
    with torch.inference_mode():
        outs.append(fd(x))
    assert all(torch.equal(out, reference) for out in outs)
    assert len(calls) == 1  # no_grad and inference mode share the entry built by the first forward
    set_basis_cache(fd, False)
    with torch.no_grad():
        assert torch.equal(fd(x), reference) and len(calls) == 2 and fd._basis_cache is None


def test_inference_mode_entry_is_not_used_for_training():
    _, fd = _fd()
    fd.segment_lengths = (16,)
    x = torch.randn(16, 24)
    with torch.inference_mode():
        fd(x)
    assert fd._basis_cache[1].is_inference()
    fd(x).sum().backward()  # would raise if the inference tensor were saved for backward
    assert fd.spectrum.grad.abs().sum() > 0 and not fd._basis_cache[1].is_inference()


def test_every_way_of_changing_theta_invalidates_the_cache():
    _, fd = _fd()
    _randomise_heads(fd)
    x = torch.randn(16, 24)

    def fresh() -> Tensor:  # what an uncached layer gives for the current Theta
        fd.cache_bases = False
        try:
            return fd(x)
        finally:
            fd.cache_bases = True

    def check(change) -> None:
        with torch.no_grad():
            before = fd(x)
            change()
            after = fd(x)
            assert torch.equal(after, fresh()) and not torch.equal(after, before)

    opt = torch.optim.SGD(fd.parameters(), lr=1e-3)

    def optimizer_step():
        with torch.enable_grad():
            fd(x).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()

    def load_state():
        state = {k: v.clone() for k, v in fd.state_dict().items()}
        state["spectrum"] += 0.01
        fd.load_state_dict(state)

    def swap_storage():  # how ZeRO-3 / FSDP hand a module its gathered parameter: version counter unchanged
        fd.spectrum.data = fd.spectrum.data + 0.01

    def write_through_data_then_step():  # untracked write, then any optimizer step: the step count invalidates
        fd.spectrum.data.add_(0.01)
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1).step()

    for change in (optimizer_step, load_state, lambda: fd.spectrum.add_(0.01), swap_storage,
                   write_through_data_then_step, lambda: fd.to(torch.float64)):
        if fd.spectrum.dtype == torch.float64:
            x = x.double()
        check(change)
    with torch.no_grad():  # the one documented blind spot, and its remedy
        before = fd(x)
        fd.spectrum.data.mul_(1.5)
        assert torch.equal(fd(x), before)
        clear_basis_cache(fd)
        assert torch.equal(fd(x), fresh())


@pytest.mark.parametrize("autocast", [False, True])
def test_gradients_identical_with_and_without_cache(autocast):
    _, fd = _fd()
    _randomise_heads(fd)
    fd.segment_lengths = (6, 10)
    x = torch.randn(16, 24)
    fd.cache_bases = False
    reference = _grads(fd, x, passes=2, autocast=autocast)
    fd.cache_bases = True
    calls = _count_rebuilds(fd)
    first = _grads(fd, x, passes=2, autocast=autocast)  # miss, then a hit inside the same step
    second = _grads(fd, x, passes=2, autocast=autocast)  # hits only
    assert len(calls) == 1
    for a, b, c in zip(reference, first, second):
        assert torch.allclose(a, b, rtol=0, atol=1e-6) and torch.equal(b, c)
    fd.spectrum.requires_grad_(False)  # frozen Theta: the cached tensor is used as is, the head still learns
    fd.zero_grad(set_to_none=True)
    fd(x).sum().backward()
    assert fd.spectrum.grad is None and fd.head.band_gate.weight.grad.abs().sum() > 0


def test_training_loop_with_cache_matches_uncached_loop():
    def train(cache: bool) -> dict[str, Tensor]:
        _, fd = _fd()
        _randomise_heads(fd)
        fd.cache_bases = cache
        fd.segment_lengths = (6, 10)
        opt = torch.optim.AdamW(fd.parameters(), lr=1e-2)
        torch.manual_seed(5)
        for _ in range(4):
            with torch.no_grad():  # a rollout-style pass between steps, as in GRPO
                fd(torch.randn(16, 24))
            fd(torch.randn(16, 24)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        return {k: v.clone() for k, v in fd.state_dict().items()}

    cached, plain = train(True), train(False)
    for name in plain:
        assert torch.allclose(cached[name], plain[name], rtol=0, atol=1e-6), name


def test_cache_stays_out_of_state_dict_copies_and_saves(tmp_path):
    model = _tiny_model()
    convert_vision_tower(model, {})
    _randomise_heads(model)
    pixels, grid = _images()
    inputs = {**_prompt(grid), "pixel_values": pixels, "image_grid_thw": grid}
    keys = set(model.state_dict())
    with torch.no_grad():
        logits = model(**inputs).logits
    layers = [m for m in model.modules() if isinstance(m, FDLinear)]
    assert all(m._basis_cache is not None for m in layers)
    assert set(model.state_dict()) == keys
    twin = copy.deepcopy(model)
    assert all(m._basis_cache is None for m in twin.modules() if isinstance(m, FDLinear))
    model.save_pretrained(tmp_path)
    loaded = load_dve_model(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, logits) and torch.equal(twin(**inputs).logits, logits)


def test_repeated_generate_builds_bases_once_per_layer():
    model = _tiny_model()
    convert_vision_tower(model, {})
    _randomise_heads(model)
    counters = [_count_rebuilds(m) for m in model.modules() if isinstance(m, FDLinear)]
    pixels, grid = _images()
    inputs = {**_prompt(grid), "pixel_values": pixels, "image_grid_thw": grid}
    outs = [model.generate(**inputs, max_new_tokens=3, do_sample=False) for _ in range(3)]
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert [len(c) for c in counters] == [1] * len(counters)
    set_basis_cache(model, False)
    assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), outs[0])


def test_checkpointed_tower_gradients_identical_with_and_without_cache():
    model = _tiny_model()
    convert_vision_tower(model, {})
    tower = find_vision_tower(model).train()
    _randomise_heads(tower)
    tower.activation_checkpointing_enable()
    pixels, grid = _images()

    def grads(cache: bool):
        set_basis_cache(tower, cache)
        tower.zero_grad()
        tower(pixels, grid_thw=grid).pooler_output.pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}

    plain, cached = grads(False), grads(True)
    assert any("spectrum" in n for n in plain) and plain.keys() == cached.keys()
    for name in plain:
        assert torch.allclose(plain[name], cached[name], rtol=0, atol=1e-6), name


# ----------------------------------------------------------------------------------------------------------- GPU
def _qwen7b_tower(dtype) -> Qwen2_5_VisionTransformerPretrainedModel:
    from transformers import Qwen2_5_VLVisionConfig

    cfg = Qwen2_5_VLVisionConfig(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                 fullatt_block_indexes=[7, 15, 23, 31], out_hidden_size=3584, patch_size=14,
                                 spatial_merge_size=2, temporal_patch_size=2, window_size=112)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return Qwen2_5_VisionTransformerPretrainedModel(cfg).to("cuda", dtype).eval()


@pytest.mark.gpu
def test_qwen7b_shaped_tower_exact_at_init_gpu():
    """fp32: max abs error < 1e-4 relative to the output scale. bf16: the spectrum is itself rounded to bf16, i.e. each
    converted weight gets one extra bf16 rounding (relative 2^-9) on top of the bf16 model's own; so the converted bf16
    tower is compared with the fp32 reference and must be within 3x the unconverted bf16 tower's own relative error."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pixels, grid = _images(grids=((1, 32, 32), (1, 24, 40)))
    pixels, grid = pixels.cuda(), grid.cuda()
    base = _qwen7b_tower(torch.float32)
    with torch.no_grad():
        ref = base(pixels, grid_thw=grid).pooler_output
        base_bf16 = copy.deepcopy(base).to(torch.bfloat16)
        err_base = (base_bf16(pixels, grid_thw=grid).pooler_output.float() - ref).norm() / ref.norm()
        converted = copy.deepcopy(base)
        report = convert_vision_tower(converted, {})
        assert len(report.layers) == 32 * 5
        out = converted(pixels, grid_thw=grid).pooler_output
        assert (out - ref).abs().max() < 1e-4 * max(1.0, ref.abs().max().item())
        out_bf16 = converted.to(torch.bfloat16)(pixels, grid_thw=grid).pooler_output.float()
        err_conv = (out_bf16 - ref).norm() / ref.norm()
    assert err_conv < 3 * err_base + 1e-3, (err_conv.item(), err_base.item())
