"""The fused C++ kernels equal the torch reference byte for byte: each kernel on random and edge
inputs, and the whole model (prefill and batched decode), on every instruction-set route this CPU
can run; the route switch refuses what the CPU cannot run; the fallback warns once and works."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from verinfer.engine import Engine, SamplingParams, kernels, rope
from verinfer.engine import fixedpoint as fp
from verinfer.engine import model as m
from verinfer.engine.testing import tiny_config, write_random_checkpoint
from verinfer.errors import LocalError

GEN = torch.Generator().manual_seed(20261121)


@pytest.fixture(autouse=True)
def _fused_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.setattr(kernels, "_fused", None)  # restored afterwards, unlike reload_setting()
    assert kernels.extension() is not None, "the C++ kernels must build on this machine"
    yield


@pytest.fixture(params=kernels.ISAS)
def route(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test that takes it runs once per route (instruction set) of the kernels."""
    name = request.param
    best = kernels.cpu_isa()
    if kernels.ISAS.index(name) > kernels.ISAS.index(best):
        pytest.skip(f"this CPU cannot run the {name} route (its best is {best})")
    before = kernels.isa()
    kernels.set_isa(name)
    yield name
    kernels.set_isa(before)


def _reference(monkeypatch: pytest.MonkeyPatch, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on the torch path."""
    with monkeypatch.context() as patch:
        patch.setenv(kernels.ENV_VAR, "torch")
        patch.setattr(kernels, "_fused", None)
        return fn(*args)


def _assert_same(fused: Any, reference: Any) -> None:
    if isinstance(fused, torch.Tensor):
        assert fused.dtype == reference.dtype and fused.shape == reference.shape
        assert torch.equal(fused, reference)
        return
    assert len(fused) == len(reference)
    for a, b in zip(fused, reference, strict=True):
        _assert_same(a, b)


def _ints(shape: tuple[int, ...], bits: int) -> torch.Tensor:
    """Random int64 of up to `bits` magnitude bits, each row at its own magnitude."""
    x = torch.randint(-(2**bits), 2**bits, shape, generator=GEN)
    rows_bits = torch.randint(0, bits + 1, shape[:-1] + (1,), generator=GEN)
    return x >> (bits - rows_bits)


def _with_edges(x: torch.Tensor, limit: int) -> torch.Tensor:
    """Sprinkle +-limit, +-(limit + 1), 0 and +-1 into x; make the first row all zeros."""
    flat = x.clone().view(-1, x.shape[-1])
    edges = torch.tensor([limit, -limit, limit + 1, -limit - 1, 0, 1, -1])
    spots = torch.randint(0, flat.numel(), (min(flat.numel(), 40),), generator=GEN)
    flat.view(-1)[spots] = edges[torch.arange(len(spots)) % len(edges)]
    flat[0] = 0
    return flat.view(x.shape)


def test_constants_mirror_python() -> None:
    ext = kernels.extension()
    assert ext is not None
    expected = {
        "ACT_FRAC": fp.ACT_FRAC, "MANT_BITS": fp.MANT_BITS, "ACT_LIMIT": fp.ACT_LIMIT,
        "PROB_FRAC": fp.PROB_FRAC, "EXP_FRAC": fp.EXP_FRAC, "_LOG2E_FRAC": fp._LOG2E_FRAC,
        "ROPE_FRAC": rope.ROPE_FRAC, "QK_FRAC": m.QK_FRAC, "QK_LIMIT": m.QK_LIMIT,
        "V_LIMIT": m.V_LIMIT, "_NORM_BITS": m._NORM_BITS, "_EPS_SHIFT": m._EPS_SHIFT,
        "INT8_LEVELS": fp.INT8_LEVELS, "WIDE_LEVELS": fp.WIDE_LEVELS,
        "WIDE_SCALE_SHIFT": fp.WIDE_SCALE_SHIFT,
    }
    assert ext.constants() == expected


def test_build_is_lazy_and_quiet() -> None:
    probe = (
        "from verinfer.engine import kernels, model\n"
        "assert not kernels._tried, 'importing the engine must not build anything'\n"
        "assert kernels.extension() is not None\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""


def test_env_var_selects_the_torch_path_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.zeros(2, dtype=torch.int64)
    assert kernels.enabled(x)
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    assert kernels.enabled(x), "the setting is read at the first use only"
    kernels.reload_setting()
    assert not kernels.enabled(x)
    monkeypatch.delenv(kernels.ENV_VAR)
    assert not kernels.enabled(x)
    kernels.reload_setting()
    assert kernels.enabled(x)
    assert not kernels.enabled(torch.zeros(2, dtype=torch.int64, device="meta"))


def test_env_var_selects_the_torch_path_in_a_new_process() -> None:
    probe = (
        "import torch\n"
        "from verinfer.engine import kernels\n"
        "assert not kernels.enabled(torch.zeros(1))\n"
        "assert not kernels._tried, 'the torch path must not build the extension'\n"
    )
    env = {**os.environ, kernels.ENV_VAR: "torch"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          check=False, env=env)
    assert done.returncode == 0, done.stderr


def test_isa_env_var_forces_a_route_in_a_new_process() -> None:
    probe = (
        "import torch\n"
        "from verinfer.engine import kernels\n"
        "assert kernels.extension() is not None\n"
        "print(kernels.isa())\n"
    )
    for name in kernels.ISAS[: kernels.ISAS.index(kernels.cpu_isa()) + 1]:
        env = {**os.environ, kernels.ISA_ENV_VAR: name}
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                              check=False, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == name


def test_isa_env_var_refuses_an_unknown_route_every_time() -> None:
    probe = (
        "from verinfer.engine import kernels\n"
        "from verinfer.errors import LocalError\n"
        "for attempt in range(2):\n"
        "    try:\n"
        "        kernels.extension()\n"
        "    except LocalError as exc:\n"
        "        print(exc)\n"
    )
    env = {**os.environ, kernels.ISA_ENV_VAR: "sse9"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          check=False, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all("VERINFER_ISA=sse9 is not a route" in line for line in lines), lines


def test_set_isa_refuses_routes_the_cpu_cannot_run() -> None:
    best = kernels.cpu_isa()
    beyond = kernels.ISAS[kernels.ISAS.index(best) + 1 :]
    if not beyond:
        pytest.skip(f"this CPU runs every route ({best})")
    for name in beyond:
        with pytest.raises(LocalError, match=f"cannot run that route \\(its best is {best}\\)"):
            kernels.set_isa(name)
    assert kernels.isa() == best


def test_floor_divide_fast_is_the_exact_floor() -> None:
    ext = kernels.extension()
    assert ext is not None
    limit = (1 << 52) - 1
    for d in (1, 2, 3, 127, 254, 2**20 + 7, 2**31 - 1, 2**44 + 3, limit):
        q = torch.randint(-(limit // d), limit // d + 1, (4000,), generator=GEN)
        a = (q * d + torch.randint(-2, 3, q.shape, generator=GEN)).clamp(-limit, limit)  # near multiples
        a = torch.cat([a, torch.randint(-limit, limit + 1, (4000,), generator=GEN),
                       torch.tensor([0, 1, -1, limit, -limit, d, -d, d - 1, 1 - d])]).clamp(-limit, limit)
        _assert_same(ext.floor_divide_fast(a, d), torch.div(a, d, rounding_mode="floor"))


@pytest.mark.parametrize("levels", [fp.INT8_LEVELS, fp.WIDE_LEVELS])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 2), (2, 3, 7), (1, 1, 64), (3, 4, 2048)])
@pytest.mark.parametrize("gain_bits", [12, 26])  # 26: the largest gains, past the fast division
def test_rms_norm_quantize(shape: tuple[int, int, int], levels: int, gain_bits: int, route: str,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    h = _with_edges(_ints(shape, 46), fp.ACT_LIMIT)
    gain_limit = (1 << (fp.ACT_FRAC + 11)) - 1  # the largest gain quantize accepts
    gain = _with_edges(_ints(shape[-1:], gain_bits), min(1 << gain_bits, gain_limit - 1))
    for eps_scaled in (0, 47223664828696452, (1 << 62) - 1):
        _assert_same(m.rms_norm_quantize(h, gain, eps_scaled, levels),
                     _reference(monkeypatch, m.rms_norm_quantize, h, gain, eps_scaled, levels))


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 40, 130])
@pytest.mark.parametrize(("k", "n"), [(1, 1), (7, 3), (64, 96), (130, 9), (200, 97), (2048, 40)])
def test_int8_matmul(rows: int, k: int, n: int, route: str) -> None:
    weight = torch.randint(-128, 128, (n, k), generator=GEN, dtype=torch.int8)
    x = torch.randint(-127, 128, (rows, k), generator=GEN, dtype=torch.int8)
    weight[0], x[0] = -128, -127  # the largest products of rows within +-127 (the AVX2 ones)
    x[-1, : k // 2] = 127
    reference = fp.int8_matmul(x, weight.t())
    _assert_same(kernels.int8_matmul(x, weight.t()), reference)
    x[-1, -1] = -128  # rows outside +-127 take another route, with the same integers
    _assert_same(kernels.int8_matmul(x, weight.t()), fp.int8_matmul(x, weight.t()))


@pytest.mark.parametrize("k", [1024, 1025, 3000])
@pytest.mark.parametrize("low", [-128, -127])  # -127: rows within +-127, the AVX2 byte products
def test_int8_matmul_largest_sums(k: int, low: int, route: str) -> None:
    """Every product at its extreme (low * -128 and low * 127): the largest sums, in every row tile."""
    rows = 40  # several tiles of rows and a partial one
    weight = torch.full((3, k), -128, dtype=torch.int8)
    weight[1] = 127
    x = torch.full((rows, k), low, dtype=torch.int8)
    x[1::2] = 127
    _assert_same(kernels.int8_matmul(x, weight.t()), fp.int8_matmul(x, weight.t()))


@pytest.mark.parametrize(("rows", "k", "n"), [(1, 1, 1), (1, 64, 96), (2, 200, 70), (3, 130, 37),
                                              (5, 33, 17), (8, 256, 130), (16, 128, 300), (17, 64, 61),
                                              (40, 64, 24), (1, 2048, 300), (2, 5632, 64)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("levels", [fp.INT8_LEVELS, fp.WIDE_LEVELS])
def test_linear_dequantization(rows: int, k: int, n: int, bias: bool, levels: int, route: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    weight = torch.randint(-128, 128, (n, k), generator=GEN, dtype=torch.int8)
    weight[0] = -128  # extreme accumulators: +-K * 128 * 127
    linear = m.Linear(
        weight_t=weight.t(),
        mant=torch.randint(2**14, 2**16 + 1, (n,), generator=GEN),
        exp=torch.randint(-10, 80, (n,), generator=GEN),  # shifts from < 0 to > 62
        bias=_ints((n,), 40) if bias else None,
    )
    xq = torch.randint(-levels, levels + 1, (rows, k), generator=GEN).to(fp.row_dtype(levels))
    xq[-1] = levels
    xq[0, : k // 2] = -levels
    xm = torch.randint(2**14, 2**16 + 1, (rows, 1), generator=GEN)
    xe = torch.randint(-20, 60, (rows, 1), generator=GEN)
    residual = _with_edges(_ints((rows, n), 46), fp.ACT_LIMIT)
    for res in (None, residual):
        _assert_same(linear(xq, xm, xe, res), _reference(monkeypatch, linear, xq, xm, xe, res))
    # (B, T, K) inputs, as the model passes them, and non-contiguous ones.
    args = (xq.view(1, rows, k), xm.view(1, rows, 1), xe.view(1, rows, 1), residual.view(1, rows, n))
    _assert_same(linear(*args), _reference(monkeypatch, linear, *args))
    strided = torch.zeros(rows, 2 * k, dtype=xq.dtype)
    strided[:, ::2] = xq
    _assert_same(linear(strided[:, ::2], xm, xe), _reference(monkeypatch, linear, xq, xm, xe))


@pytest.mark.parametrize("rows", [1, 3, 8, 9, 20])
@pytest.mark.parametrize("k", [16, 1537, 8192, 8193, 9000])
def test_linear_wide_largest_sums(rows: int, k: int, route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wide rows at +-WIDE_LEVELS against weights at -128 and 127: the largest products of the
    whole-int16 AVX2 route (its int32 lanes hold at most 8192 values of K), with scales that
    make the output the integer product itself, against int64 arithmetic and the torch path."""
    levels = fp.WIDE_LEVELS
    weight = torch.randint(-128, 128, (5, k), generator=GEN, dtype=torch.int8)
    weight[0], weight[1] = -128, 127
    weight[2, ::2] = -128
    xq = torch.randint(-levels, levels + 1, (rows, k), generator=GEN).to(torch.int16)
    xq[0] = levels
    xq[-1] = -levels
    if rows > 2:
        xq[1, 1::2] = -levels
    exact = xq.long() @ weight.long().t()
    # acc * 2**16 rounded by 2**16, times mantissa 1, shifted by 16 - 16 + 0: the product itself.
    linear = m.Linear(weight_t=weight.t(), mant=torch.ones(5, dtype=torch.int64),
                      exp=torch.full((5,), fp.ACT_FRAC), bias=None)
    xm = torch.full((rows, 1), 1 << fp.WIDE_SCALE_SHIFT)
    xe = torch.full((rows, 1), fp.WIDE_SCALE_SHIFT)
    out = linear(xq, xm, xe)
    assert torch.equal(out, exact)
    _assert_same(out, _reference(monkeypatch, linear, xq, xm, xe))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> m.IntModel:
    path = write_random_checkpoint(tmp_path_factory.mktemp("kernels"), tiny_config(), seed=3)
    return Engine.load(path).model


def _cache(model: m.IntModel, rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = model.config
    shape = (rows, c.num_key_value_heads, length, c.head_dim)
    k = torch.randint(-m.QK_LIMIT, m.QK_LIMIT + 1, shape, generator=GEN, dtype=torch.int32)
    v = torch.randint(-m.V_LIMIT, m.V_LIMIT + 1, shape, generator=GEN, dtype=torch.int32)
    k[..., 0] = m.QK_LIMIT
    v[..., 1] = -m.V_LIMIT
    return k, v


# (positions per batch entry, cache row per entry): a decode step with mixed lengths, prefill
# chunks at different offsets, one token at position 0.
BATCHES = [
    ([[0]], [0]),
    ([[7], [0], [30], [3]], [2, 0, 3, 1]),
    ([[0, 1, 2, 3]], [1]),
    ([[5, 6, 7], [20, 21, 22]], [3, 0]),
]


@pytest.mark.parametrize(("positions", "rows"), BATCHES)
def test_rope_to_cache_and_attend(positions: list[list[int]], rows: list[int], tiny_model: m.IntModel,
                                  route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    c = tiny_model.config
    pos, row = torch.tensor(positions), torch.tensor(rows)
    width = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
    qkv = _with_edges(_ints((len(rows), len(positions[0]), width), 30), 1 << 26)
    k_cache, v_cache = _cache(tiny_model, 4, 40)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q = m._rope_to_cache(tiny_model, qkv, pos, row, k_cache, v_cache)
    q_ref = _reference(monkeypatch, m._rope_to_cache, tiny_model, qkv, pos, row, k_ref, v_ref)
    _assert_same((q, k_cache, v_cache), (q_ref, k_ref, v_ref))
    _assert_same(m._attend(tiny_model, q, k_cache, v_cache, pos, row),
                 _reference(monkeypatch, m._attend, tiny_model, q, k_cache, v_cache, pos, row))


@pytest.mark.parametrize("position", [0, 1, 3, 4, 127, 128, 299])
def test_attend_decode_at_long_positions(position: int, tiny_model: m.IntModel, route: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    c = tiny_model.config
    k_cache, v_cache = _cache(tiny_model, 2, 300)
    k_cache[1, :, : position + 1] = k_cache[1, :, :1]  # row 1: every key alike, so one flat softmax
    pos, row = torch.tensor([[position], [position]]), torch.tensor([0, 1])
    q = _with_edges(_ints((2, 1, c.num_attention_heads, c.head_dim), 20), m.QK_LIMIT).clamp(-m.QK_LIMIT, m.QK_LIMIT)
    fused = m._attend(tiny_model, q, k_cache, v_cache, pos, row)
    _assert_same(fused, _reference(monkeypatch, m._attend, tiny_model, q, k_cache, v_cache, pos, row))


@pytest.mark.parametrize(("heads", "n_kv", "hd"), [(2, 1, 8), (4, 2, 40), (8, 2, 64), (2, 2, 12), (3, 1, 96)])
def test_attend_head_shapes(heads: int, n_kv: int, hd: int, route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mant, exp = m._inv_sqrt_scale(hd)
    model = SimpleNamespace(inv_sqrt_mant=mant, inv_sqrt_exp=exp)  # all _attend reads of a model
    shape = (2, n_kv, 70, hd)
    k_cache = torch.randint(-m.QK_LIMIT, m.QK_LIMIT + 1, shape, generator=GEN, dtype=torch.int32)
    v_cache = torch.randint(-m.V_LIMIT, m.V_LIMIT + 1, shape, generator=GEN, dtype=torch.int32)
    pos, row = torch.tensor([[69], [5]]), torch.tensor([1, 0])
    q = torch.randint(-m.QK_LIMIT, m.QK_LIMIT + 1, (2, 1, heads, hd), generator=GEN)
    _assert_same(m._attend(model, q, k_cache, v_cache, pos, row),  # type: ignore[arg-type]
                 _reference(monkeypatch, m._attend, model, q, k_cache, v_cache, pos, row))


def test_attend_with_extreme_queries(tiny_model: m.IntModel, route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    c = tiny_model.config
    k_cache, v_cache = _cache(tiny_model, 2, 64)
    pos, row = torch.tensor([[63], [10]]), torch.tensor([1, 0])
    shape = (2, 1, c.num_attention_heads, c.head_dim)
    for q in (torch.full(shape, m.QK_LIMIT), torch.full(shape, -m.QK_LIMIT), torch.zeros(shape, dtype=torch.int64)):
        _assert_same(m._attend(tiny_model, q, k_cache, v_cache, pos, row),
                     _reference(monkeypatch, m._attend, tiny_model, q, k_cache, v_cache, pos, row))


@pytest.mark.parametrize("shape", [(1, 1, 2), (1, 1, 10), (2, 3, 320), (1, 5, 11264), (1, 1, 11264), (1, 1, 4098)])
def test_swiglu_quantize(shape: tuple[int, int, int], route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gate_up = _ints(shape, 34)
    half = shape[-1] // 2
    gate_up[..., :half] = _with_edges(gate_up[..., :half], 1 << 30)
    gate_up[..., half:] = _with_edges(gate_up[..., half:], 1 << 31)
    _assert_same(m._swiglu_quantize(gate_up), _reference(monkeypatch, m._swiglu_quantize, gate_up))


def _forward(model: m.IntModel, tokens: list[list[int]], chunk: int) -> tuple[list[torch.Tensor], m.KVCache]:
    """Logits of a batch of equal-length sequences, prefilled in chunks then decoded one token
    at a time for a subset of rows at different positions."""
    bsz, length = len(tokens), len(tokens[0])
    cache = m.KVCache.allocate(model.config, bsz, length + 4, model.device)
    ids = torch.tensor(tokens)
    logits = []
    for start in range(0, length, chunk):
        piece = ids[:, start : start + chunk]
        positions = torch.arange(start, start + piece.shape[1]).expand(bsz, -1)
        h = m.forward_layers(model, m.embed(model, piece), cache, positions)
        logits.append(m.head(model, h))
    rows = torch.tensor([2, 0])
    for step in range(3):
        positions = torch.tensor([[length + step], [length - 3 + step]])
        h = m.forward_layers(model, m.embed(model, ids[rows, step : step + 1]), cache, positions, rows=rows)
        logits.append(m.head(model, h))
    return logits, cache


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
def test_whole_model_logits_equal_torch_path(variant: str, tmp_path: Path, route: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config() if variant == "llama" else tiny_config(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", attention_bias=True)
    model = Engine.load(write_random_checkpoint(tmp_path, config, seed=1)).model
    tokens = torch.randint(0, 320, (3, 21), generator=GEN).tolist()
    with torch.inference_mode():
        for chunk in (21, 8):
            fused, fused_cache = _forward(model, tokens, chunk)
            ref, ref_cache = _reference(monkeypatch, _forward, model, tokens, chunk)
            _assert_same(fused, ref)
            _assert_same(fused_cache.k + fused_cache.v, ref_cache.k + ref_cache.v)


def test_generation_equals_torch_path(tiny_engine: Engine, route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = ["a", "a longer prompt, of another length", "mid length"]
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=7)
    fused = tiny_engine.generate(prompts, params, prefill_chunk=5)
    ref = _reference(monkeypatch, tiny_engine.generate, prompts, params, 5)
    assert [(r.token_ids, r.logits_hash) for r in fused] == [(r.token_ids, r.logits_hash) for r in ref]


def test_failed_build_warns_once_and_falls_back(tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = tiny_engine.generate(["fallback"], SamplingParams(max_tokens=4))[0]

    def broken_build() -> None:
        raise OSError("no compiler here")

    monkeypatch.setattr(kernels, "build", broken_build)
    monkeypatch.setattr(kernels, "_extension", None)
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_fused", None)
    x = torch.zeros(1, dtype=torch.int64)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        assert not kernels.enabled(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not kernels.enabled(x)
        result = tiny_engine.generate(["fallback"], SamplingParams(max_tokens=4))[0]
    assert (result.token_ids, result.logits_hash) == (expected.token_ids, expected.logits_hash)
