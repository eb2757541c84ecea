"""The integer transformer (Llama family): embedding, decoder layers, final norm and head.

Pure computation on tensors already in memory: no loading, no I/O. Every step is integer
arithmetic (see `fixedpoint`), so the output bytes do not depend on thread count, batch
composition, chunking or device. One model definition serves whole-model inference and layer
ranges (`forward_layers`) for split inference. On CPU the hot steps run as fused C++ kernels
(`kernels`) that equal the torch code here byte for byte; that code stays the reference.

Value formats: the residual stream, v, MLP activations and logits are int64 fixed point with
`ACT_FRAC` fraction bits; inputs of weight products are rows with a per-row scale; rotated
queries and keys are fixed point with `QK_FRAC` bits saturated below 256 in magnitude; the KV
cache is int32 (keys `QK_FRAC` bits, values `ACT_FRAC` bits saturated below 1024).

Wide inputs (15 bits, `fp.WIDE_LEVELS`) feed the q/k/v, down and head projections; the gate/up
and o projections take int8. The SwiGLU output and the normed residual are heavy-tailed, so
127 steps per row erase their small values: on the demo's held-out text, int8 everywhere kept
95.1% of the float model's next tokens, wide down only 96.9%, these three 97.9%. Each wide
input costs one more int8 product with the same weight bytes (`fp.wide_matmul`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from verinfer.engine import fixedpoint as fp
from verinfer.engine import hugepages, kernels
from verinfer.engine.config import ModelConfig
from verinfer.engine.quantize import QuantizedModel
from verinfer.engine.rope import ROPE_FRAC, rope_tables

QK_FRAC = 12  # fraction bits of rotated queries and keys
QK_LIMIT = (1 << 20) - 1  # |q|, |k| < 256: q.k partial sums stay below 2**48 for head_dim <= 256
V_LIMIT = (1 << 26) - 1  # |v| < 1024: probs.v partial sums stay below 2**47
_NORM_BITS = 20  # RMSNorm rescales each row to ~20 significant bits before squaring
_EPS_SHIFT = 40  # RMSNorm's eps is pre-shifted so its rescaling is always a right shift


@dataclass
class Linear:
    """An int8 weight (N, K) kept as a column-major (K, N) view, with per-row scales."""

    weight_t: torch.Tensor  # (K, N) int8, transposed view of a contiguous (N, K)
    mant: torch.Tensor  # (N,) int64
    exp: torch.Tensor  # (N,) int64
    bias: torch.Tensor | None  # (N,) int64, ACT_FRAC fraction bits

    def __post_init__(self) -> None:
        self.shift_base = self.exp - fp.ACT_FRAC

    def __call__(
        self, xq: torch.Tensor, xm: torch.Tensor, xe: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(..., K) int8 or wide (int16) rows with row scales (..., 1) -> (..., N) int64 fixed point.

        A wide row's product (up to K * 16383 * 127) times its row mantissa is rounded by
        2**WIDE_SCALE_SHIFT before the weight mantissa multiplies it, so every intermediate
        stays below 2**62 for K < 2**24; an int8 row's product needs no such step.
        With `residual` (..., N), returns the residual update clamp(residual + out, +-ACT_LIMIT).
        """
        if kernels.enabled(xq):
            return kernels.linear(xq, xm, xe, self.weight_t, self.mant, self.shift_base, self.bias, residual)
        flat = xq.reshape(-1, xq.shape[-1])  # (R, K): the products want two dimensions
        if xq.dtype == torch.int16:
            wide = fp.wide_matmul(flat, self.weight_t).view(*xq.shape[:-1], -1)
            acc = fp.shift_round(wide * xm, fp.WIDE_SCALE_SHIFT)
            shift = xe - fp.WIDE_SCALE_SHIFT + self.shift_base
        else:
            acc = fp.int8_matmul(flat, self.weight_t).to(torch.int64).view(*xq.shape[:-1], -1) * xm
            shift = xe + self.shift_base
        out = fp.shift_round(acc * self.mant, shift)
        out = out if self.bias is None else out + self.bias
        return out if residual is None else (residual + out).clamp(-fp.ACT_LIMIT, fp.ACT_LIMIT)

    @classmethod
    def stack(cls, parts: list[Linear]) -> Linear:
        """One Linear computing several that share an input (rows concatenated): fewer,
        larger products; each output row is computed exactly as before."""
        biases = [p.bias for p in parts]
        if any(b is not None for b in biases):
            biases = [b if b is not None else torch.zeros_like(p.mant) for b, p in zip(biases, parts)]
        return cls(
            weight_t=hugepages.cat_rows([p.weight_t.t() for p in parts]).t(),  # huge pages on CPU
            mant=torch.cat([p.mant for p in parts]),
            exp=torch.cat([p.exp for p in parts]),
            bias=torch.cat(biases) if biases[0] is not None else None,  # type: ignore[arg-type]
        )


@dataclass
class Layer:
    input_norm: torch.Tensor  # (D,) int64 gain, ACT_FRAC bits
    qkv_proj: Linear  # q, k and v projections stacked
    o_proj: Linear
    post_norm: torch.Tensor
    gate_up_proj: Linear  # gate and up projections stacked
    down_proj: Linear


@dataclass
class KVCache:
    """Preallocated per-layer K and V, (B, n_kv, S, head_dim) int32 fixed point."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def allocate(cls, config: ModelConfig, batch: int, length: int, device: torch.device) -> KVCache:
        shape = (batch, config.num_key_value_heads, length, config.head_dim)
        layers = range(config.num_hidden_layers)
        return cls(
            [torch.zeros(shape, dtype=torch.int32, device=device) for _ in layers],
            [torch.zeros(shape, dtype=torch.int32, device=device) for _ in layers],
        )

    @property
    def length(self) -> int:
        return self.k[0].shape[2]


class IntModel:
    """Device-resident integer weights and tables of one quantized model, or of a part of it.

    On the quantized tensors' own device the model shares their storage: the q/k/v and
    gate/up weights it stacks replace the separate tensors in `qmodel.tensors` by views of
    the stacked ones (same values and shapes).

    A part (a pipeline stage's layer range) holds only the tensors `qmodel` carries: a layer,
    the embedding, the final norm or the head that is absent is None, and running it raises.
    `install` and `drop_layer` change which parts are held (a stage given another range).
    """

    def __init__(self, qmodel: QuantizedModel, device: str | torch.device = "cpu") -> None:
        self.config = qmodel.config
        self.model_id = qmodel.model_id
        self.device = torch.device(device)
        c = self.config
        self.layers: list[Layer | None] = [None] * c.num_hidden_layers
        self.embed: Linear | None = None
        self.embed_rows: torch.Tensor | None = None
        self.norm: torch.Tensor | None = None
        self.lm_head: Linear | None = None
        self.install(qmodel.tensors)
        cos, sin = rope_tables(c, c.context_length)
        self.rope_cos, self.rope_sin = cos.to(self.device), sin.to(self.device)
        eps = c.eps_fraction()
        # eps in units of 2**-(32 + _EPS_SHIFT); rescaled per row by a right shift.
        self.eps_scaled = round(eps * (1 << (32 + _EPS_SHIFT)))
        self.inv_sqrt_mant, self.inv_sqrt_exp = _inv_sqrt_scale(c.head_dim)

    def install(self, t: dict[str, torch.Tensor]) -> None:
        """Build every layer, embedding, norm and head whose tensors `t` carries (quantized
        names); the parts already held stay."""
        c = self.config

        def vec(name: str) -> torch.Tensor:
            return t[name].to(self.device, torch.int64)

        def linear(name: str) -> Linear:
            bias_name = name.removesuffix(".weight") + ".bias"
            return Linear(
                weight_t=t[name].to(self.device).contiguous().t(),
                mant=vec(name + "_scale_mant"),
                exp=vec(name + "_scale_exp"),
                bias=vec(bias_name) if bias_name in t else None,
            )

        def stacked(names: list[str]) -> Linear:
            # Where the stacked weight lives with the parts, the parts become views of it, so
            # loading never holds two copies of more than one layer's weights (peak memory).
            joined = Linear.stack([linear(name) for name in names])
            rows = joined.weight_t.t()
            if rows.device == t[names[0]].device:
                start = 0
                for name in names:
                    count = t[name].shape[0]
                    t[name] = rows[start : start + count]
                    start += count
            return joined

        if "model.embed_tokens.weight" in t:
            self.embed = linear("model.embed_tokens.weight")
            # Embedding rows: gathered, so keep the row-major int8 matrix at hand too.
            self.embed_rows = self.embed.weight_t.t()
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            if p + "input_layernorm.weight" not in t:
                continue
            self.layers[i] = Layer(
                input_norm=vec(p + "input_layernorm.weight"),
                qkv_proj=stacked([p + f"self_attn.{x}_proj.weight" for x in "qkv"]),
                o_proj=linear(p + "self_attn.o_proj.weight"),
                post_norm=vec(p + "post_attention_layernorm.weight"),
                gate_up_proj=stacked([p + f"mlp.{x}_proj.weight" for x in ("gate", "up")]),
                down_proj=linear(p + "mlp.down_proj.weight"),
            )
        if "model.norm.weight" in t:
            self.norm = vec("model.norm.weight")
        if c.tie_word_embeddings:
            self.lm_head = self.embed if self.norm is not None else None
        elif "lm_head.weight" in t:
            self.lm_head = linear("lm_head.weight")

    def drop_layer(self, index: int) -> None:
        self.layers[index] = None

    def drop_ends(self, embedding: bool, head: bool) -> None:
        """Free the embedding (a first stage's) and/or the final norm and head (a last one's);
        a tied embedding stays while either end still needs it."""
        if head:
            self.norm, self.lm_head = None, None
        if embedding and self.lm_head is not self.embed:
            self.embed, self.embed_rows = None, None

    def held_layers(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if layer is not None]

    def _linears(self) -> list[Linear]:
        linears = [x for layer in self.layers if layer is not None
                   for x in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj)]
        if self.embed is not None:
            linears.append(self.embed)
        if self.lm_head is not None and self.lm_head is not self.embed:
            linears.append(self.lm_head)
        return linears

    def weight_bytes(self) -> int:
        """Bytes of int8 weight matrices held (an embedding tied to the head counted once)."""
        return sum(x.weight_t.numel() for x in self._linears())

    def resident_bytes(self) -> int:
        """Bytes of every weight tensor held: int8 matrices, their scales and biases, norm gains."""
        total = 0
        for x in self._linears():
            parts = [x.weight_t, x.mant, x.exp, x.shift_base] + ([x.bias] if x.bias is not None else [])
            total += sum(p.numel() * p.element_size() for p in parts)
        gains = [layer.input_norm for layer in self.layers if layer is not None]
        gains += [layer.post_norm for layer in self.layers if layer is not None]
        gains += [self.norm] if self.norm is not None else []
        return total + sum(g.numel() * g.element_size() for g in gains)


def _inv_sqrt_scale(head_dim: int) -> tuple[int, int]:
    """1 / sqrt(head_dim) as mant * 2**-exp with a 15-bit mantissa, from an exact isqrt."""
    exp = 0
    while True:
        twice = math.isqrt((4 << (2 * exp)) // head_dim)  # floor(2 * 2**exp / sqrt(head_dim))
        mant = (twice + 1) // 2
        if mant >= 1 << (fp.MANT_BITS - 1):
            return mant, exp
        exp += 1


def rms_norm_quantize(
    h: torch.Tensor, gain: torch.Tensor, eps_scaled: int, levels: int = fp.INT8_LEVELS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RMSNorm(h) * gain per row as int8 or wide rows (`levels`) with their scales: the input
    of the next matrix product.

    Each row is rescaled by a power of two to ~20 bits, so the sum of squares is exact in int64;
    the root is an integer square root; the division by it is folded into the row's scale.
    |gain| < 2**(ACT_FRAC + 11) (`quantize`) keeps `levels * y` below 2**61.
    """
    if kernels.enabled(h):
        return kernels.rms_norm_quantize(h, gain, eps_scaled, levels)
    amax = h.abs().amax(dim=-1, keepdim=True).clamp(min=1)
    shift = fp.bit_length(amax) - _NORM_BITS
    hs = fp.shift_round(h, shift)  # real value = hs * 2**(shift - ACT_FRAC)
    mean_sq = torch.div((hs * hs).sum(dim=-1, keepdim=True), h.shape[-1], rounding_mode="floor")
    eps = eps_scaled >> (2 * shift + _EPS_SHIFT).clamp(max=62)  # units of mean_sq; shift >= -19
    rms = fp.isqrt(mean_sq + eps).clamp(min=1)
    y = hs * gain
    ymax = y.abs().amax(dim=-1, keepdim=True).clamp(min=1)
    q = fp.div_round(levels * y, ymax).to(fp.row_dtype(levels))
    mant, exp = fp.ratio_to_scale(ymax, levels * rms, fp.ACT_FRAC)
    return q, mant, exp


def embed(model: IntModel, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids -> (B, T, D) residual stream, int64 fixed point."""
    if model.embed is None or model.embed_rows is None:
        raise ValueError("this model part holds no embedding (it is not a first stage)")
    rows = model.embed_rows[tokens].to(torch.int64)
    mant = model.embed.mant[tokens].unsqueeze(-1)
    exp = model.embed.exp[tokens].unsqueeze(-1)
    return fp.shift_round(rows * mant, exp - fp.ACT_FRAC)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE (rotate-half layout) on (B, T, H, hd) Q16 with cos/sin (B, T, 1, hd/2) -> QK_FRAC."""
    half = x.shape[-1] // 2
    x = x.clamp(-(1 << (fp.ACT_FRAC + 10)), 1 << (fp.ACT_FRAC + 10))
    x1, x2 = x[..., :half], x[..., half:]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    out = fp.shift_round(out, ROPE_FRAC + fp.ACT_FRAC - QK_FRAC)
    return out.clamp(-QK_LIMIT, QK_LIMIT)


def _rope_to_cache(
    model: IntModel,
    qkv: torch.Tensor,
    positions: torch.Tensor,
    rows: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> torch.Tensor:
    """Rotate q and k of `qkv` (B, T, (H + 2 n_kv) hd) at `positions` (B, T), write k and the
    saturated v to cache rows `rows`; returns the rotated q (B, T, H, hd)."""
    c = model.config
    if kernels.enabled(qkv):
        return kernels.rope_to_cache(qkv, model.rope_cos, model.rope_sin, positions, rows,
                                     k_cache, v_cache, c.num_attention_heads)
    bsz, t, _ = qkv.shape
    n_kv, hd = c.num_key_value_heads, c.head_dim
    q_width, kv_width = c.num_attention_heads * hd, n_kv * hd
    q = qkv[..., :q_width].view(bsz, t, c.num_attention_heads, hd)
    k = qkv[..., q_width : q_width + kv_width].view(bsz, t, n_kv, hd)
    v = qkv[..., q_width + kv_width :].view(bsz, t, n_kv, hd)
    cos = model.rope_cos[positions].unsqueeze(2)  # (B, T, 1, hd/2)
    sin = model.rope_sin[positions].unsqueeze(2)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    row_index = rows.unsqueeze(1)  # (B, 1)
    k_cache[row_index, :, positions] = k.to(torch.int32)
    v_cache[row_index, :, positions] = v.clamp(-V_LIMIT, V_LIMIT).to(torch.int32)
    return q


def _attend(
    model: IntModel,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal attention of rotated q (B, T, H, hd) over cache rows `rows`, as int8 rows
    (B, T, H hd) with their scales: the output projection's input."""
    if kernels.enabled(q):
        return kernels.attend(q, k_cache, v_cache, positions, rows,
                              model.inv_sqrt_mant, model.inv_sqrt_exp)
    bsz, t, heads, hd = q.shape
    n_kv = k_cache.shape[1]
    group = heads // n_kv
    span = int(positions.max()) + 1
    keys = k_cache[rows, :, :span]  # (B, n_kv, S, hd)
    values = v_cache[rows, :, :span]

    q = q.view(bsz, t, n_kv, group, hd).permute(0, 2, 3, 1, 4)  # (B, n_kv, G, T, hd)
    dots = fp.exact_float_matmul(q.reshape(bsz, n_kv, group * t, hd), keys.transpose(2, 3))
    dots = fp.shift_round(dots, 2 * QK_FRAC - fp.ACT_FRAC)  # q.k with ACT_FRAC bits
    scores = fp.shift_round(dots * model.inv_sqrt_mant, model.inv_sqrt_exp)
    scores = scores.view(bsz, n_kv, group, t, span)

    key_pos = torch.arange(span, device=q.device)
    visible = key_pos.view(1, 1, 1, 1, span) <= positions.view(bsz, 1, 1, t, 1)
    probs = fp.softmax(scores, visible)  # (B, n_kv, G, T, S), PROB_FRAC bits
    mixed = fp.exact_float_matmul(probs.view(bsz, n_kv, group * t, span), values)
    mixed = fp.shift_round(mixed, fp.PROB_FRAC).view(bsz, n_kv, group, t, hd)
    mixed = mixed.permute(0, 3, 1, 2, 4).reshape(bsz, t, heads * hd)
    return fp.quantize_rows(mixed, fp.ACT_FRAC)


def attention(
    model: IntModel,
    layer: Layer,
    index: int,
    h: torch.Tensor,
    cache: KVCache,
    positions: torch.Tensor,
    rows: torch.Tensor,
) -> torch.Tensor:
    """The residual stream (B, T, D) after the self-attention block, for queries at `positions`.

    Batch entry b reads and writes cache row `rows[b]`, so a batch can be any subset of the
    cache's sequences (finished ones drop out without moving anything).
    """
    xq, xm, xe = rms_norm_quantize(h, layer.input_norm, model.eps_scaled, fp.WIDE_LEVELS)
    qkv = layer.qkv_proj(xq, xm, xe)
    k_cache, v_cache = cache.k[index], cache.v[index]
    q = _rope_to_cache(model, qkv, positions, rows, k_cache, v_cache)
    oq, om, oe = _attend(model, q, k_cache, v_cache, positions, rows)
    return layer.o_proj(oq, om, oe, residual=h)


def _swiglu_quantize(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """silu(gate) * up of (B, T, 2F) gate/up products, saturated, as wide rows with scales."""
    if kernels.enabled(gate_up):
        return kernels.swiglu_quantize(gate_up)
    width = gate_up.shape[-1] // 2
    gate, up = gate_up[..., :width], gate_up[..., width:].clamp(-(1 << 31), 1 << 31)
    act = fp.shift_round(fp.silu(gate) * up, fp.ACT_FRAC)
    return fp.quantize_rows(act.clamp(-fp.ACT_LIMIT, fp.ACT_LIMIT), fp.ACT_FRAC, fp.WIDE_LEVELS)


def mlp(layer: Layer, h: torch.Tensor, eps_scaled: int) -> torch.Tensor:
    """The residual stream (B, T, D) after the SwiGLU feed-forward block."""
    xq, xm, xe = rms_norm_quantize(h, layer.post_norm, eps_scaled)
    gate_up = layer.gate_up_proj(xq, xm, xe)
    aq, am, ae = _swiglu_quantize(gate_up)
    return layer.down_proj(aq, am, ae, residual=h)


def forward_layers(
    model: IntModel,
    h: torch.Tensor,
    cache: KVCache,
    positions: torch.Tensor,
    start: int = 0,
    end: int | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run decoder layers start..end-1 on hidden states h (B, T, D) at `positions` (B, T).

    `rows` maps batch entries to cache rows (default: entry b uses row b).
    """
    end = model.config.num_hidden_layers if end is None else end
    if rows is None:
        rows = torch.arange(h.shape[0], device=h.device)
    for index in range(start, end):
        layer = model.layers[index]
        if layer is None:
            raise ValueError(f"this model part does not hold layer {index}")
        h = attention(model, layer, index, h, cache, positions, rows)
        h = mlp(layer, h, model.eps_scaled)
    return h


def final_norm(model: IntModel, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The final RMSNorm as wide rows with scales (the head's input)."""
    if model.norm is None:
        raise ValueError("this model part holds no final norm (it is not a last stage)")
    return rms_norm_quantize(h, model.norm, model.eps_scaled, fp.WIDE_LEVELS)


def head(model: IntModel, h: torch.Tensor) -> torch.Tensor:
    """Final norm and LM head: (B, T, D) -> logits (B, T, V) int32 fixed point (ACT_FRAC bits)."""
    xq, xm, xe = final_norm(model, h)
    if model.lm_head is None:
        raise ValueError("this model part holds no LM head (it is not a last stage)")
    logits = model.lm_head(xq, xm, xe)
    limit = torch.iinfo(torch.int32).max
    return logits.clamp(-limit, limit).to(torch.int32)
