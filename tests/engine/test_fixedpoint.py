"""The integer kernels agree with exact Python-integer arithmetic, and approximate the reals."""

from __future__ import annotations

import math

import torch

from verinfer.engine import fixedpoint as fp


def _edge_values() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    powers = 1 << torch.arange(0, 62)
    return torch.cat([
        torch.tensor([0, 1, 2, 3, 2**53 - 1, 2**53, 2**53 + 1, 2**62 - 1]),
        powers, powers - 1, powers + 1,
        torch.randint(0, 2**62, (5000,), generator=gen),
        torch.randint(0, 2**24, (5000,), generator=gen),
    ]).clamp(min=0, max=2**62 - 1)


def test_bit_length_is_exact() -> None:
    x = _edge_values()
    assert fp.bit_length(x).tolist() == [int(v).bit_length() for v in x]


def test_isqrt_is_exact() -> None:
    x = _edge_values()
    assert fp.isqrt(x).tolist() == [math.isqrt(int(v)) for v in x]


def test_shift_round_is_half_up_and_multiplies_for_negative_shifts() -> None:
    gen = torch.Generator().manual_seed(1)
    v = torch.randint(-(2**50), 2**50, (4000,), generator=gen)
    s = torch.randint(-6, 40, (4000,), generator=gen)
    expected = [int(a) << -int(b) if b <= 0 else (int(a) + (1 << (int(b) - 1))) >> int(b) for a, b in zip(v, s)]
    assert fp.shift_round(v, s).tolist() == expected
    assert fp.shift_round(torch.tensor([5, -5, 6, -6, 7]), 1).tolist() == [3, -2, 3, -3, 4]


def test_div_round() -> None:
    num = torch.tensor([7, -7, 5, -5, 0, 10**15])
    assert fp.div_round(num, 2).tolist() == [4, -3, 3, -2, 0, 5 * 10**14]


def test_ratio_to_scale_normalized_and_accurate() -> None:
    gen = torch.Generator().manual_seed(2)
    num = torch.randint(1, 2**45, (3000,), generator=gen)
    den = torch.randint(1, 2**30, (3000,), generator=gen)
    mant, exp = fp.ratio_to_scale(num, den, 16)
    assert bool(((mant >= 2**14) & (mant <= 2**16)).all())
    approx = mant.double() * torch.pow(2.0, -exp.double())
    exact = num.double() / den.double() / 2**16
    assert float(((approx - exact) / exact).abs().max()) < 2**-14
    zero_m, zero_e = fp.ratio_to_scale(torch.tensor([0]), 7, 3)
    assert zero_m.item() == 0 and zero_e.item() == 0


def test_quantize_rows_range_and_reconstruction() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-(2**40), 2**40, (8, 64), generator=gen)
    q, m, e = fp.quantize_rows(x, fp.ACT_FRAC)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    back = q.double() * m.double() * torch.pow(2.0, -e.double())
    real = x.double() / 2**fp.ACT_FRAC
    rel = (back - real).abs().amax(-1) / real.abs().amax(-1)
    assert float(rel.max()) < 1 / 254 + 1e-4  # half a quantization step


def test_wide_rows_range_and_reconstruction() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(-(2**45), 2**45, (8, 64), generator=gen)
    x[0] = fp.ACT_LIMIT  # the largest activation
    q, m, e = fp.quantize_rows(x, fp.ACT_FRAC, fp.WIDE_LEVELS)
    assert q.dtype == torch.int16 and int(q.abs().max()) == fp.WIDE_LEVELS
    back = q.double() * m.double() * torch.pow(2.0, -e.double())
    real = x.double() / 2**fp.ACT_FRAC
    rel = (back - real).abs().amax(-1) / real.abs().amax(-1)
    assert float(rel.max()) < 1 / (2 * fp.WIDE_LEVELS) + 1e-4  # half a step, 129 times finer


def test_wide_matmul_is_the_exact_product() -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.randint(-fp.WIDE_LEVELS, fp.WIDE_LEVELS + 1, (6, 96), generator=gen, dtype=torch.int16)
    x[0], x[1] = fp.WIDE_LEVELS, -fp.WIDE_LEVELS
    w = torch.randint(-127, 128, (40, 96), generator=gen, dtype=torch.int8)
    w[0] = -127
    assert torch.equal(fp.wide_matmul(x, w.t()), x.long() @ w.long().t())


def test_exp_neg_accuracy() -> None:
    d = torch.arange(0, 30 << fp.ACT_FRAC, 977)
    got = fp.exp_neg(d).double() / 2**fp.EXP_FRAC
    ref = torch.exp(-d.double() / 2**fp.ACT_FRAC)
    assert float((got - ref).abs().max()) < 1e-5
    assert int(fp.exp_neg(torch.tensor([0]))) == 2**fp.EXP_FRAC


def test_softmax_masks_and_sums_to_one() -> None:
    gen = torch.Generator().manual_seed(4)
    scores = torch.randint(-(8 << fp.ACT_FRAC), 8 << fp.ACT_FRAC, (5, 9), generator=gen)
    visible = torch.ones(5, 9, dtype=torch.bool)
    visible[0, 2:] = False
    p = fp.softmax(scores, visible)
    assert bool((p[0, 2:] == 0).all())
    assert bool(((p.sum(-1) - 2**fp.PROB_FRAC).abs() <= 9).all())
    ref = torch.softmax(torch.where(visible, scores.double() / 2**fp.ACT_FRAC, -math.inf), -1)
    assert float((p.double() / 2**fp.PROB_FRAC - ref).abs().max()) < 1e-5


def test_silu_accuracy() -> None:
    x = torch.arange(-(20 << fp.ACT_FRAC), 20 << fp.ACT_FRAC, 1013)
    got = fp.silu(x).double() / 2**fp.ACT_FRAC
    ref = torch.nn.functional.silu(x.double() / 2**fp.ACT_FRAC)
    assert float((got - ref).abs().max()) < 1e-4


def test_exact_float_matmul_matches_integer_matmul() -> None:
    gen = torch.Generator().manual_seed(5)
    a = torch.randint(-2047, 2048, (3, 7, 64), generator=gen)
    b = torch.randint(-(2**26), 2**26, (3, 64, 11), generator=gen)
    assert torch.equal(fp.exact_float_matmul(a, b), torch.matmul(a, b))


def test_int8_matmul_exact() -> None:
    gen = torch.Generator().manual_seed(6)
    x = torch.randint(-127, 128, (5, 96), generator=gen, dtype=torch.int8)
    w = torch.randint(-127, 128, (40, 96), generator=gen, dtype=torch.int8)
    assert torch.equal(fp.int8_matmul(x, w.t()).long(), x.long() @ w.long().t())
