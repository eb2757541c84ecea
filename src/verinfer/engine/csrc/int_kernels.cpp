// Fused CPU kernels of the integer engine: each equals its torch reference in model.py /
// fixedpoint.py byte for byte (same roundings, clamps and shift rules), in one pass instead of
// dozens of tensor ops.
//
// Built with -fwrapv, so int64 overflow wraps exactly as torch's int64 ops do (the engine's
// bounds keep it from happening; -fwrapv keeps it defined if it ever did). Every output element
// is computed by one thread from the same inputs in a fixed order, so results do not depend on
// the thread count.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "products_neon.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

// Routes: the instruction sets a kernel may use, slowest first. Every route computes the same
// integers; which one runs is the CPU's best unless set_isa forces another (VERINFER_ISA).
// `scalar` is the portable C++ compiled for the build's baseline target (x86-64: SSE2; aarch64:
// NEON, which the compiler may vectorize with). On x86-64, `avx2` is x86-64-v3; `avx512`
// x86-64-v4 (AVX-512 F, BW, DQ, VL); `avx512vnni` adds the VNNI byte products. On aarch64,
// `neon` and `neon-dotprod` are the weight products of products_neon.h (the other kernels are
// the scalar route's, vectorized by the compiler for the baseline NEON).
namespace {

#if defined(__x86_64__)
enum Isa : int { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, ISA_AVX512VNNI = 3, ISA_COUNT = 4 };
const char* const ISA_NAMES[] = {"scalar", "avx2", "avx512", "avx512vnni"};
#elif defined(__aarch64__)
enum Isa : int { ISA_SCALAR = 0, ISA_NEON = 1, ISA_NEON_DOTPROD = 2, ISA_COUNT = 3 };
const char* const ISA_NAMES[] = {"scalar", "neon", "neon-dotprod"};
#else
enum Isa : int { ISA_SCALAR = 0, ISA_COUNT = 1 };
const char* const ISA_NAMES[] = {"scalar"};
#endif

Isa best_isa() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("x86-64-v4")) return __builtin_cpu_supports("avx512vnni") ? ISA_AVX512VNNI : ISA_AVX512;
  if (__builtin_cpu_supports("x86-64-v3")) return ISA_AVX2;
#elif defined(__aarch64__)
  return verinfer_neon::has_dotprod() ? ISA_NEON_DOTPROD : ISA_NEON;
#endif
  return ISA_SCALAR;
}

const Isa cpu_isa = best_isa();
Isa isa = cpu_isa;  // the route in use; set_isa changes it between calls (from Python)

}  // namespace

// Hot loops are written once as an always-inline body (`name##_body`) and compiled per route:
// ISA_ROUTES defines `name`, which calls the copy built for the route in use. On other
// architectures there is one copy, for the build's target (NEON where the target has it).
#define ROUTED_BODY static inline __attribute__((always_inline))
#if defined(__x86_64__)
#define ISA_ROUTES(ret, name, params, args)                                       \
  __attribute__((target("arch=x86-64-v4"))) ret name##_v4 params { return name##_body args; } \
  __attribute__((target("arch=x86-64-v3"))) ret name##_v3 params { return name##_body args; } \
  ret name##_base params { return name##_body args; }                             \
  ret name params {                                                               \
    if (isa >= ISA_AVX512) return name##_v4 args;                                 \
    if (isa == ISA_AVX2) return name##_v3 args;                                   \
    return name##_base args;                                                      \
  }
#else
#define ISA_ROUTES(ret, name, params, args) \
  ret name params { return name##_body args; }
#endif

namespace {

// Mirrors of the Python constants; tests/engine/test_kernels.py checks they agree.
constexpr int64_t ACT_FRAC = 16;     // fixedpoint.ACT_FRAC
constexpr int64_t MANT_BITS = 15;    // fixedpoint.MANT_BITS
constexpr int64_t ACT_LIMIT = (int64_t{1} << 46) - 1;  // fixedpoint.ACT_LIMIT
constexpr int64_t PROB_FRAC = 20;    // fixedpoint.PROB_FRAC
constexpr int64_t EXP_FRAC = 30;     // fixedpoint.EXP_FRAC
constexpr int64_t LOG2E_FRAC = 30;   // fixedpoint._LOG2E_FRAC
constexpr int64_t ROPE_FRAC = 24;    // rope.ROPE_FRAC
constexpr int64_t QK_FRAC = 12;      // model.QK_FRAC
constexpr int64_t QK_LIMIT = (int64_t{1} << 20) - 1;  // model.QK_LIMIT
constexpr int64_t V_LIMIT = (int64_t{1} << 26) - 1;   // model.V_LIMIT
constexpr int64_t NORM_BITS = 20;    // model._NORM_BITS
constexpr int64_t EPS_SHIFT = 40;    // model._EPS_SHIFT
constexpr int64_t INT8_LEVELS = 127;   // fixedpoint.INT8_LEVELS
constexpr int64_t WIDE_LEVELS = 16383;  // fixedpoint.WIDE_LEVELS
constexpr int64_t WIDE_SCALE_SHIFT = 16;  // fixedpoint.WIDE_SCALE_SHIFT

inline int64_t clamp(int64_t x, int64_t lo, int64_t hi) { return std::min(std::max(x, lo), hi); }

inline int64_t abs64(int64_t x) { return x < 0 ? -x : x; }  // wraps for INT64_MIN, as torch.abs

// Left shift of the two's-complement bits (torch's int64 `<<`), amount in [0, 63].
inline int64_t shl(int64_t x, int64_t s) { return static_cast<int64_t>(static_cast<uint64_t>(x) << s); }

// fp.shift_round with a Python int shift.
inline int64_t shift_round_const(int64_t x, int64_t s) {
  if (s > 0) return ((x >> (s - 1)) + 1) >> 1;
  return s < 0 ? shl(x, -s) : x;
}

// fp.shift_round with a tensor shift: both shift amounts clamped to [0, 62].
inline int64_t shift_round_var(int64_t x, int64_t s) {
  const int64_t less = s - 1;
  return ((shl(x, clamp(-less, 0, 62)) >> clamp(less, 0, 62)) + 1) >> 1;
}

inline int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// fp.div_round, den > 0.
inline int64_t div_round(int64_t num, int64_t den) { return floor_div(2 * num + den, 2 * den); }

// Operands below this use `floor_div_fast`.
constexpr int64_t FAST_DIV_LIMIT = int64_t{1} << 52;

// floor(a / d) for |a| < 2**52 and 0 < d < 2**52, given inv = 1.0 / d in float64: exact, with
// no integer division (tens of cycles each) and no branch, so loops of it vectorize. a is exact
// in float64 and the rounded product a * inv is within |a / d| 2**-52 < 1 of a / d; truncated,
// it is within 2 of the floor, and the compares below move it onto the floor exactly.
inline int64_t floor_div_fast(int64_t a, int64_t d, double inv) {
  int64_t q = static_cast<int64_t>(static_cast<double>(a) * inv);
  int64_t r = a - q * d;  // |q d| < |a| + 2 d: no overflow
  for (int step = 0; step < 2; ++step) {
    const bool low = r < 0, high = r >= d;
    q += static_cast<int64_t>(high) - static_cast<int64_t>(low);
    r += (low ? d : 0) - (high ? d : 0);
  }
  return q;
}

// fp.bit_length for x >= 0.
inline int64_t bit_length(int64_t x) { return x == 0 ? 0 : 64 - __builtin_clzll(static_cast<uint64_t>(x)); }

// fp.isqrt: floor square root of 0 <= x < 2**62, digit by digit (no float involved).
inline int64_t isqrt(int64_t x) {
  uint64_t rest = static_cast<uint64_t>(x), root = 0, bit = uint64_t{1} << 62;
  while (bit > rest) bit >>= 2;
  while (bit != 0) {
    if (rest >= root + bit) {
      rest -= root + bit;
      root = (root >> 1) + bit;
    } else {
      root >>= 1;
    }
    bit >>= 2;
  }
  return static_cast<int64_t>(root);
}

// fp.ratio_to_scale for 0 <= num, den > 0.
inline void ratio_to_scale(int64_t num, int64_t den, int64_t extra_exp, int64_t* mant, int64_t* exp) {
  const int64_t k = MANT_BITS + bit_length(den) - bit_length(num);
  const int64_t up = std::max<int64_t>(k, 0), down = std::max<int64_t>(-k, 0);
  *mant = div_round(shl(num, up), shl(den, down));
  *exp = num == 0 ? 0 : k + extra_exp;
}

// max |x[i]| (INT64_MIN for n = 0).
ROUTED_BODY int64_t abs_max_body(const int64_t* x, int64_t n) {
  int64_t amax = INT64_MIN;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, abs64(x[i]));
  return amax;
}
ISA_ROUTES(int64_t, abs_max, (const int64_t* x, int64_t n), (x, n))

// q[i] = div_round(levels x[i], amax) for amax >= 1 and |x[i]| <= amax (or x[i] = INT64_MIN, whose
// abs wraps and whose 2 levels x[i] wraps to 0).
template <typename Q>
inline __attribute__((always_inline)) void scale_row(const int64_t* x, int64_t n, int64_t amax, int64_t levels,
                                                     Q* q) {
  // |2 levels x + amax| <= (2 levels + 1) amax and 2 amax stay below 2**52: the fast division
  // (amax < 2**44, 2**28 in real units, for int8 rows; amax < 2**37 for wide rows).
  if (amax < FAST_DIV_LIMIT / (2 * levels + 1)) {
    const double inv = 1.0 / static_cast<double>(2 * amax);
    for (int64_t i = 0; i < n; ++i)
      q[i] = static_cast<Q>(floor_div_fast(2 * levels * x[i] + amax, 2 * amax, inv));
    return;
  }
  for (int64_t i = 0; i < n; ++i) q[i] = static_cast<Q>(div_round(levels * x[i], amax));
}

ROUTED_BODY void scale_to_int8_body(const int64_t* x, int64_t n, int64_t amax, int8_t* q) {
  scale_row(x, n, amax, INT8_LEVELS, q);
}
ISA_ROUTES(void, scale_to_int8, (const int64_t* x, int64_t n, int64_t amax, int8_t* q), (x, n, amax, q))

ROUTED_BODY void scale_to_wide_body(const int64_t* x, int64_t n, int64_t amax, int16_t* q) {
  scale_row(x, n, amax, WIDE_LEVELS, q);
}
ISA_ROUTES(void, scale_to_wide, (const int64_t* x, int64_t n, int64_t amax, int16_t* q), (x, n, amax, q))

inline void scale_to(const int64_t* x, int64_t n, int64_t amax, int8_t* q) { scale_to_int8(x, n, amax, q); }
inline void scale_to(const int64_t* x, int64_t n, int64_t amax, int16_t* q) { scale_to_wide(x, n, amax, q); }

// fp.quantize_rows on one row of n values: int8_t rows (INT8_LEVELS) or int16_t (WIDE_LEVELS).
template <typename Q>
void quantize_row(const int64_t* x, int64_t n, int64_t frac, Q* q, int64_t* mant, int64_t* exp) {
  constexpr int64_t levels = sizeof(Q) == 1 ? INT8_LEVELS : WIDE_LEVELS;
  const int64_t amax = std::max<int64_t>(abs_max(x, n), 1);
  scale_to(x, n, amax, q);
  ratio_to_scale(amax, levels, frac, mant, exp);
}

// The dtype of rows with `levels` steps (fp.row_dtype).
torch::ScalarType row_dtype(int64_t levels) {
  TORCH_CHECK(levels == INT8_LEVELS || levels == WIDE_LEVELS, "levels must be ", INT8_LEVELS, " or ", WIDE_LEVELS);
  return levels == INT8_LEVELS ? torch::kInt8 : torch::kInt16;
}

// The exp2 tables and log2(e) of fp._exp2_tables.
struct Exp2Tables {
  const int64_t* hi;
  const int64_t* lo;
  int64_t log2e;
};

// fp.exp_neg: e**-d in Q30 for d >= 0 with ACT_FRAC bits.
inline int64_t exp_neg(int64_t d, const Exp2Tables& tables) {
  d = std::min(d, int64_t{64} << ACT_FRAC);
  const int64_t t = shift_round_const(d * tables.log2e, LOG2E_FRAC);
  const int64_t whole = std::min<int64_t>(t >> ACT_FRAC, 62);
  const int64_t frac = t & ((int64_t{1} << ACT_FRAC) - 1);
  const int64_t mantissa = shift_round_const(tables.hi[frac >> 8] * tables.lo[frac & 0xFF], EXP_FRAC);
  return shift_round_var(mantissa, whole);
}

// fp.silu.
inline int64_t silu(int64_t x, const Exp2Tables& tables) {
  x = clamp(x, -(int64_t{1} << (ACT_FRAC + 14)), int64_t{1} << (ACT_FRAC + 14));
  const int64_t e = exp_neg(abs64(x), tables);
  constexpr int64_t one = int64_t{1} << EXP_FRAC;
  const int64_t sig_abs = div_round(one << EXP_FRAC, one + e);
  const int64_t sig = x >= 0 ? sig_abs : one - sig_abs;
  return shift_round_const(x * sig, EXP_FRAC);
}

void check(const torch::Tensor& t, torch::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

Exp2Tables exp2_tables(const torch::Tensor& hi, const torch::Tensor& lo, int64_t log2e) {
  check(hi, torch::kInt64, "hi table");
  check(lo, torch::kInt64, "lo table");
  TORCH_CHECK(hi.numel() == 256 && lo.numel() == 256, "exp2 tables must have 256 entries");
  return {hi.data_ptr<int64_t>(), lo.data_ptr<int64_t>(), log2e};
}

// Shape of `x` with its last axis replaced by `last`.
std::vector<int64_t> with_last(const torch::Tensor& x, int64_t last) {
  auto sizes = x.sizes().vec();
  sizes.back() = last;
  return sizes;
}

// Rows per parallel task so that a task has at least ~`min_work` element operations.
int64_t grain(int64_t row_work, int64_t min_work = 32768) {
  return std::max<int64_t>(1, min_work / std::max<int64_t>(row_work, 1));
}

}  // namespace

// RMSNorm's row work: y[i] = shift_round(x[i], shift) * g[i]; *sum_sq = sum of the squared
// rescaled x; returns max |y[i]|.
ROUTED_BODY int64_t rescale_row_body(const int64_t* x, int64_t n, int64_t shift, const int64_t* g, int64_t* y, int64_t* sum_sq) {
  int64_t squares = 0, ymax = INT64_MIN;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t hs = shift_round_var(x[i], shift);
    squares += hs * hs;
    y[i] = hs * g[i];
    ymax = std::max(ymax, abs64(y[i]));
  }
  *sum_sq = squares;
  return ymax;
}
ISA_ROUTES(int64_t, rescale_row, (const int64_t* x, int64_t n, int64_t shift, const int64_t* g, int64_t* y, int64_t* sum_sq), (x, n, shift, g, y, sum_sq))

// model.rms_norm_quantize over the last axis of h: (q int8 or int16 by `levels`, mant (..., 1),
// exp (..., 1)).
std::vector<torch::Tensor> rms_norm_quantize(const torch::Tensor& h, const torch::Tensor& gain,
                                             int64_t eps_scaled, int64_t levels) {
  check(h, torch::kInt64, "h");
  check(gain, torch::kInt64, "gain");
  const int64_t d = h.size(-1), rows = h.numel() / d;
  TORCH_CHECK(gain.numel() == d, "gain has ", gain.numel(), " entries, rows have ", d);
  const bool wide = row_dtype(levels) == torch::kInt16;
  auto q = torch::empty(h.sizes(), h.options().dtype(row_dtype(levels)));
  auto mant = torch::empty(with_last(h, 1), h.options());
  auto exp = torch::empty(with_last(h, 1), h.options());
  const int64_t* hp = h.data_ptr<int64_t>();
  const int64_t* g = gain.data_ptr<int64_t>();
  int8_t* q8 = wide ? nullptr : q.data_ptr<int8_t>();
  int16_t* q16 = wide ? q.data_ptr<int16_t>() : nullptr;
  int64_t* mp = mant.data_ptr<int64_t>();
  int64_t* ep = exp.data_ptr<int64_t>();
  at::parallel_for(0, rows, grain(d), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> y(d);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t* x = hp + r * d;
      const int64_t shift = bit_length(std::max<int64_t>(abs_max(x, d), 1)) - NORM_BITS;
      int64_t sum_sq = 0;
      const int64_t ymax = std::max<int64_t>(rescale_row(x, d, shift, g, y.data(), &sum_sq), 1);
      const int64_t mean_sq = floor_div(sum_sq, d);
      const int64_t eps = eps_scaled >> std::min<int64_t>(2 * shift + EPS_SHIFT, 62);
      const int64_t rms = std::max<int64_t>(isqrt(mean_sq + eps), 1);
      if (wide) {
        scale_to_wide(y.data(), d, ymax, q16 + r * d);
      } else {
        scale_to_int8(y.data(), d, ymax, q8 + r * d);
      }
      ratio_to_scale(ymax, levels * rms, ACT_FRAC, mp + r, ep + r);
    }
  });
  return {q, mant, exp};
}

// Columns per block of the product loops: each loaded input row serves this many columns.
constexpr int64_t COLUMN_BLOCK = 4;

// Up to this many rows, the VNNI products take one column at a time (column_dots): the weight
// is then one sequential stream, which measured faster (memory-bound); more rows take tiles of
// 4 x 4 (vnni_columns), which reuse each load more (compute-bound).
constexpr int64_t STREAM_ROWS = 3;

// How far ahead of its reads column_dots prefetches the weight for 3 rows (best of 2, 8 and
// 32 KiB). For 1 and 2 rows the hardware prefetcher alone streams faster (measured 5% at 1).
constexpr int64_t STREAM_PREFETCH = 8192;

// acc[r * stride + c - c0] = sum_i x[r][i] * weight(w[c][i]) for columns c0..c1-1, in blocks of
// 4 columns x 4 rows: each loaded weight serves 4 rows and each loaded input 4 columns. Plain
// loops that the compiler vectorizes with 16-bit multiply-adds (products_int16).
template <typename Input, typename Weight>
inline __attribute__((always_inline)) void blocked_products(const Input* x, const int8_t* w, int32_t* acc,
                                                            int64_t stride, int64_t rows, int64_t k,
                                                            int64_t c0, int64_t c1, Weight weight) {
  constexpr int64_t block = COLUMN_BLOCK;
  int64_t c = c0;
  for (; c + block <= c1; c += block) {
    const int8_t* wc = w + c * k;
    int32_t* out = acc + (c - c0);
    // Fetch the next block's weights from memory while this one computes: the loads of a
    // streamed weight otherwise stall the multiply-adds (1.3-1.6x faster measured).
    if (c + 2 * block <= c1)
      for (int64_t i = 0; i < block * k; i += 64) __builtin_prefetch(wc + block * k + i);
    int64_t r = 0;
    for (; r + block <= rows; r += block) {
      const Input* xr = x + r * k;
      int32_t sums[block][block] = {};
      for (int64_t i = 0; i < k; ++i) {
        for (int64_t j = 0; j < block; ++j) {
          const auto v = weight(wc[j * k + i]);
          for (int64_t q = 0; q < block; ++q) sums[q][j] += xr[q * k + i] * v;
        }
      }
      for (int64_t q = 0; q < block; ++q)
        for (int64_t j = 0; j < block; ++j) out[(r + q) * stride + j] = sums[q][j];
    }
    for (; r < rows; ++r) {
      const Input* xr = x + r * k;
      int32_t sums[block] = {};
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < block; ++j) sums[j] += xr[i] * weight(wc[j * k + i]);
      for (int64_t j = 0; j < block; ++j) out[r * stride + j] = sums[j];
    }
  }
  for (; c < c1; ++c) {
    for (int64_t r = 0; r < rows; ++r) {
      int32_t sum = 0;
      for (int64_t i = 0; i < k; ++i) sum += x[r * k + i] * weight(w[c * k + i]);
      acc[r * stride + c - c0] = sum;
    }
  }
}

// Inputs widened to int16: 16-bit multiply-adds (pmaddwd) on any x86-64; target clones pick the
// widest vector ISA the CPU has.
ROUTED_BODY void products_int16_body(const int16_t* x16, const int8_t* w, int32_t* acc, int64_t stride, int64_t rows, int64_t k,
                    int64_t c0, int64_t c1) {
  blocked_products(x16, w, acc, stride, rows, k, c0, c1, [](int8_t b) { return static_cast<int16_t>(b); });
}
ISA_ROUTES(void, products_int16, (const int16_t* x16, const int8_t* w, int32_t* acc, int64_t stride, int64_t rows, int64_t k, int64_t c0, int64_t c1), (x16, w, acc, stride, rows, k, c0, c1))

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,avx512vnni")

// sum += the 4-byte dot products of unsigned u with signed s per int32 lane (vpdpbusd). Written
// in asm because GCC 12 copies the accumulator of the intrinsic around every use.
inline __m512i dpbusd(__m512i sum, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(sum) : "v"(u), "v"(s));
  return sum;
}

// With AVX512-VNNI: 8-bit multiply-adds (vpdpbusd) of unsigned by signed bytes. The weight's
// bits flipped at the top read as unsigned w + 128, so x . (w + 128) - 128 sum(x) = x . w,
// exactly (all int32, and the true sums fit). One tile: ROWS rows x COLS columns of 64-byte
// lanes, so each weight load serves ROWS rows and each input load COLS columns. Each 64-byte
// step also prefetches `pf_lines` cache lines from `pf` on (see vnni_columns).
template <int ROWS, int COLS>
inline void vnni_tile(const int8_t* x, const int32_t* x_sums, const int8_t* w, int64_t k, const int8_t* pf,
                      int64_t pf_lines, int32_t* acc, int64_t stride) {
  __m512i sums[ROWS][COLS];
  for (int r = 0; r < ROWS; ++r)
    for (int j = 0; j < COLS; ++j) sums[r][j] = _mm512_setzero_si512();
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  int64_t i = 0;
  for (; i + 64 <= k; i += 64) {
    for (int64_t l = 0; l < pf_lines; ++l) _mm_prefetch(reinterpret_cast<const char*>(pf + (i * pf_lines + l * 64)), _MM_HINT_T0);
    __m512i wv[COLS];
    for (int j = 0; j < COLS; ++j) wv[j] = _mm512_xor_si512(_mm512_loadu_si512(w + j * k + i), flip);
    for (int r = 0; r < ROWS; ++r) {
      const __m512i xv = _mm512_loadu_si512(x + r * k + i);
      for (int j = 0; j < COLS; ++j) sums[r][j] = dpbusd(sums[r][j], wv[j], xv);
    }
  }
  if (i < k) {
    const __mmask64 lanes = _bzhi_u64(~uint64_t{0}, static_cast<unsigned>(k - i));
    __m512i wv[COLS];
    for (int j = 0; j < COLS; ++j) wv[j] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(lanes, w + j * k + i), flip);
    for (int r = 0; r < ROWS; ++r) {
      const __m512i xv = _mm512_maskz_loadu_epi8(lanes, x + r * k + i);  // masked-off lanes add 0
      for (int j = 0; j < COLS; ++j) sums[r][j] = dpbusd(sums[r][j], wv[j], xv);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int j = 0; j < COLS; ++j) acc[r * stride + j] = _mm512_reduce_add_epi32(sums[r][j]) - 128 * x_sums[r];
}

// The tiles of one block of COLS columns (COLS k contiguous bytes) over all rows, in row tiles
// of 4. With `prefetch`, they also fetch the next block from memory in address order, spread
// evenly over the tiles, so the memory stream keeps going while the tiles compute.
template <int COLS>
inline void vnni_columns(const int8_t* x, const int32_t* x_sums, const int8_t* w, int64_t rows, int64_t k,
                         bool prefetch, int32_t* acc, int64_t stride) {
  const int64_t tiles = (rows + 3) / 4, steps = k / 64;
  const int64_t lines = prefetch && steps > 0 ? (COLS * k / 64 + tiles * steps - 1) / (tiles * steps) : 0;
  const int8_t* next = w + COLS * k;
  int64_t r = 0, t = 0;
  for (; r + 4 <= rows; r += 4, ++t)
    vnni_tile<4, COLS>(x + r * k, x_sums + r, w, k, next + t * steps * lines * 64, lines, acc + r * stride, stride);
  const int8_t* pf = next + t * steps * lines * 64;
  switch (rows - r) {
    case 3: vnni_tile<3, COLS>(x + r * k, x_sums + r, w, k, pf, lines, acc + r * stride, stride); break;
    case 2: vnni_tile<2, COLS>(x + r * k, x_sums + r, w, k, pf, lines, acc + r * stride, stride); break;
    case 1: vnni_tile<1, COLS>(x + r * k, x_sums + r, w, k, pf, lines, acc + r * stride, stride); break;
    default: break;
  }
}

// For up to STREAM_ROWS rows: the products of one column, so the weight is read in one
// sequential stream (see STREAM_PREFETCH); two sums per row break the dependency chain of the
// adds.
template <int ROWS>
inline void column_dots(const int8_t* x, const int32_t* x_sums, const int8_t* wc, int64_t k, int32_t* out,
                        int64_t stride) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i even[ROWS], odd[ROWS];
  for (int r = 0; r < ROWS; ++r) even[r] = odd[r] = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 128 <= k; i += 128) {
    if constexpr (ROWS >= 3) {
      _mm_prefetch(reinterpret_cast<const char*>(wc + i + STREAM_PREFETCH), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(wc + i + 64 + STREAM_PREFETCH), _MM_HINT_T0);
    }
    const __m512i w0 = _mm512_xor_si512(_mm512_loadu_si512(wc + i), flip);
    const __m512i w1 = _mm512_xor_si512(_mm512_loadu_si512(wc + i + 64), flip);
    for (int r = 0; r < ROWS; ++r) {
      even[r] = dpbusd(even[r], w0, _mm512_loadu_si512(x + r * k + i));
      odd[r] = dpbusd(odd[r], w1, _mm512_loadu_si512(x + r * k + i + 64));
    }
  }
  for (; i < k; i += 64) {
    const __mmask64 lanes = k - i >= 64 ? ~__mmask64{0} : _bzhi_u64(~uint64_t{0}, static_cast<unsigned>(k - i));
    const __m512i w0 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(lanes, wc + i), flip);
    for (int r = 0; r < ROWS; ++r)
      even[r] = dpbusd(even[r], w0, _mm512_maskz_loadu_epi8(lanes, x + r * k + i));
  }
  for (int r = 0; r < ROWS; ++r)
    out[r * stride] = _mm512_reduce_add_epi32(_mm512_add_epi32(even[r], odd[r])) - 128 * x_sums[r];
}

void products_vnni(const int8_t* x, const int32_t* x_sums, const int8_t* w, int32_t* acc, int64_t stride,
                   int64_t rows, int64_t k, int64_t c0, int64_t c1) {
  static_assert(STREAM_ROWS == 3, "one case per row count below");
  switch (rows) {
    case 1: for (int64_t c = c0; c < c1; ++c) column_dots<1>(x, x_sums, w + c * k, k, acc + c - c0, stride); return;
    case 2: for (int64_t c = c0; c < c1; ++c) column_dots<2>(x, x_sums, w + c * k, k, acc + c - c0, stride); return;
    case 3: for (int64_t c = c0; c < c1; ++c) column_dots<3>(x, x_sums, w + c * k, k, acc + c - c0, stride); return;
    default: break;
  }
  int64_t c = c0;
  // Each block prefetches the next. Past the last block that reads another task's columns or
  // past the weight's end: harmless (a prefetch never faults) and a few KiB per task.
  for (; c + COLUMN_BLOCK <= c1; c += COLUMN_BLOCK)
    vnni_columns<COLUMN_BLOCK>(x, x_sums, w + c * k, rows, k, true, acc + (c - c0), stride);
  for (; c < c1; ++c) vnni_columns<1>(x, x_sums, w + c * k, rows, k, false, acc + (c - c0), stride);
}

#pragma GCC pop_options

#endif

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")

// The sum of the 8 int32 lanes.
inline int32_t reduce_add_avx2(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// sum += the 4-byte dot products of x and w per int32 lane, exactly, for x in [-127, 127] and
// any int8 w (w_abs = |w|, ones = 16-bit ones). vpmaddubsw multiplies unsigned by signed bytes
// and adds pairs into int16 with saturation: |w| (up to 128, unsigned) times x with w's sign
// (vpsignb; -x never wraps since x != -128) is w x, and a pair sums to at most 2 * 128 * 127 =
// 32512 < 2**15, so it never saturates; vpmaddwd by ones then adds pairs of those into int32.
// Written in asm because GCC 12 otherwise stores the accumulators to memory at every step.
inline __m256i madd_step(__m256i sum, __m256i w_abs, __m256i w, __m256i x, __m256i ones) {
  __m256i t;
  asm("vpsignb %[w], %[x], %[t]\n\t"
      "vpmaddubsw %[t], %[a], %[t]\n\t"
      "vpmaddwd %[ones], %[t], %[t]\n\t"
      "vpaddd %[t], %[sum], %[sum]"
      : [sum] "+x"(sum), [t] "=&x"(t)
      : [a] "x"(w_abs), [w] "x"(w), [x] "x"(x), [ones] "x"(ones));
  return sum;
}

// How far ahead of its reads the first row tile of a weight column prefetches it: the hardware
// prefetcher alone left the AVX2 loops 10-30% short of the memory stream (measured at 1 and 8
// rows, 2048 x 2048 weights read from memory rather than cache).
constexpr int64_t MADD_PREFETCH = 4096;

// Columns per block of products_avx2 for more than MADD_ROWS rows: the block stays in L2 while
// each tile of MADD_ROWS rows passes over it.
constexpr int64_t MADD_COLUMNS = 32;

// Rows per tile of products_avx2: their sums, one weight chunk, its magnitudes and the input fit
// the 16 vector registers.
constexpr int64_t MADD_ROWS = 8;

// out[r * stride] = x[r] . wc for ROWS rows and one weight column wc (k contiguous bytes) by
// madd_step: each 32-byte weight load serves every row of the tile, and the column is read as one
// sequential stream. Bytes past the last multiple of 32 are added one by one.
template <int ROWS, bool PREFETCH>
inline void madd_rows(const int8_t* x, const int8_t* wc, int64_t k, int32_t* out, int64_t stride) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i sums[ROWS];
  for (int r = 0; r < ROWS; ++r) sums[r] = _mm256_setzero_si256();
  auto step = [&](int64_t i) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wc + i));
    const __m256i magnitude = _mm256_abs_epi8(w);
    for (int r = 0; r < ROWS; ++r)
      sums[r] = madd_step(sums[r], magnitude, w, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + r * k + i)), ones);
  };
  int64_t i = 0;
  for (; i + 64 <= k; i += 64) {
    if constexpr (PREFETCH) _mm_prefetch(reinterpret_cast<const char*>(wc + i + MADD_PREFETCH), _MM_HINT_T0);
    step(i);
    step(i + 32);
  }
  for (; i + 32 <= k; i += 32) step(i);
  for (int r = 0; r < ROWS; ++r) {
    int32_t total = reduce_add_avx2(sums[r]);
    for (int64_t l = i; l < k; ++l) total += static_cast<int32_t>(x[r * k + l]) * wc[l];
    out[r * stride] = total;
  }
}

// madd_rows for 1 to MADD_ROWS rows.
template <bool PREFETCH>
inline void madd_rows_upto8(const int8_t* x, const int8_t* wc, int64_t rows, int64_t k, int32_t* out, int64_t stride) {
  static_assert(MADD_ROWS == 8, "one case per row count below");
  switch (rows) {
    case 1: return madd_rows<1, PREFETCH>(x, wc, k, out, stride);
    case 2: return madd_rows<2, PREFETCH>(x, wc, k, out, stride);
    case 3: return madd_rows<3, PREFETCH>(x, wc, k, out, stride);
    case 4: return madd_rows<4, PREFETCH>(x, wc, k, out, stride);
    case 5: return madd_rows<5, PREFETCH>(x, wc, k, out, stride);
    case 6: return madd_rows<6, PREFETCH>(x, wc, k, out, stride);
    case 7: return madd_rows<7, PREFETCH>(x, wc, k, out, stride);
    default: return madd_rows<8, PREFETCH>(x, wc, k, out, stride);
  }
}

// Columns c0..c1-1 of the product, for rows x in [-127, 127] (on the avx2 and avx512 routes), in
// tiles of up to MADD_ROWS rows x 1 column. Decode (at most MADD_ROWS rows) reads each weight
// column from memory once for all rows: this made 8 rows cost 2.7x one row instead of 5-7x
// (tiles of 4 rows x 2 columns, two interleaved streams per tile). More rows (prefill) go over
// blocks of MADD_COLUMNS columns, one row tile at a time: the first tile fetches the block, the
// others read it from cache.
void products_avx2(const int8_t* x, const int8_t* w, int32_t* acc, int64_t stride, int64_t rows, int64_t k,
                   int64_t c0, int64_t c1) {
  for (int64_t b0 = c0; b0 < c1; b0 += MADD_COLUMNS) {
    const int64_t b1 = std::min(b0 + MADD_COLUMNS, c1);
    for (int64_t r = 0; r < rows; r += MADD_ROWS) {
      const int64_t tile = std::min(MADD_ROWS, rows - r);
      for (int64_t c = b0; c < b1; ++c) {
        int32_t* out = acc + r * stride + (c - c0);
        if (r == 0) madd_rows_upto8<true>(x, w + c * k, tile, k, out, stride);
        else madd_rows_upto8<false>(x + r * k, w + c * k, tile, k, out, stride);
      }
    }
  }
}

// Wide rows (int16, |x| <= WIDE_LEVELS) times int8 weights by vpmaddwd, without splitting the
// rows into two int8 halves: the weight bytes sign-extended to int16 (vpmovsxbw, once per tile
// for all its rows), then 16 products per row and instruction, pairs added into int32. Half the
// multiplies of the two halves' byte products (each of which needs vpmaddubsw and vpmaddwd for
// 32 products), for the same integers: x . w is the same sum whichever way it is split.
//
// Exact: a pair sums to at most 2 * 16383 * 128 = 4194048 in magnitude, and an int32 lane adds
// one pair per 16 values of K, so up to WIDE_K_BLOCK values (512 pairs: below 2**31) a lane
// cannot overflow; longer rows are summed in blocks of WIDE_K_BLOCK, each reduced into int64.
constexpr int64_t WIDE_K_BLOCK = 8192;

// Values of K per block for more than MADD_ROWS wide rows: a tile's 8 rows of this many int16
// (24 KiB) stay in L1 while it passes over a block of columns (the down projection's K = 5632
// would otherwise stream each tile's rows from L2 once per column).
constexpr int64_t WIDE_K_TILE = 1536;

// sum += x . w per int32 lane, 16 int16 products (w: sign-extended weight). In asm for the same
// reason as madd_step (and x in a register: with a memory operand GCC 12 stores every
// accumulator to the stack after each step, as it cannot tell the two apart).
inline __m256i wide_step(__m256i sum, __m256i w, __m256i x) {
  __m256i t;
  asm("vpmaddwd %[x], %[w], %[t]\n\t"
      "vpaddd %[t], %[sum], %[sum]"
      : [sum] "+x"(sum), [t] "=&x"(t)
      : [w] "x"(w), [x] "x"(x));
  return sum;
}

// The sum of the 8 int32 lanes in int64 (8 lanes of up to 2**31 each overflow int32).
inline int64_t reduce_add_avx2_64(__m256i v) {
  const __m256i wide = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
                                        _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
  const __m128i pair = _mm_add_epi64(_mm256_castsi256_si128(wide), _mm256_extracti128_si256(wide, 1));
  return _mm_cvtsi128_si64(pair) + _mm_extract_epi64(pair, 1);
}

// out[r * stride] (+)= x[r] . wc over `len` values (at most WIDE_K_BLOCK) for ROWS wide rows
// (row r at x + r * xstride) and one weight column wc: each sign-extended weight chunk serves
// every row of the tile, and the column is one sequential stream. ADD adds to out (a later block
// of K) instead of storing.
template <int ROWS, bool PREFETCH, bool ADD>
inline void wide_rows(const int16_t* x, int64_t xstride, const int8_t* wc, int64_t len, int64_t* out,
                      int64_t stride) {
  // Up to 4 rows, two sets of sums (even and odd steps): one add chain per row would be the
  // bottleneck of 1 or 2 rows. Either way a lane adds at most len / 16 pairs.
  constexpr int SETS = ROWS <= 4 ? 2 : 1;
  __m256i sums[SETS][ROWS];
  for (int s = 0; s < SETS; ++s)
    for (int r = 0; r < ROWS; ++r) sums[s][r] = _mm256_setzero_si256();
  auto step = [&](int64_t i, int s) {
    const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wc + i)));
    for (int r = 0; r < ROWS; ++r)
      sums[s][r] = wide_step(sums[s][r], w, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + r * xstride + i)));
  };
  int64_t i = 0;
  for (; i + 64 <= len; i += 64) {
    if constexpr (PREFETCH) _mm_prefetch(reinterpret_cast<const char*>(wc + i + MADD_PREFETCH), _MM_HINT_T0);
    step(i, 0);
    step(i + 16, SETS - 1);
    step(i + 32, 0);
    step(i + 48, SETS - 1);
  }
  for (; i + 16 <= len; i += 16) step(i, 0);
  for (int r = 0; r < ROWS; ++r) {
    int64_t total = reduce_add_avx2_64(sums[0][r]) + (SETS > 1 ? reduce_add_avx2_64(sums[SETS - 1][r]) : 0);
    for (int64_t l = i; l < len; ++l) total += static_cast<int64_t>(x[r * xstride + l]) * wc[l];
    out[r * stride] = ADD ? out[r * stride] + total : total;
  }
}

// wide_rows for 1 to MADD_ROWS rows.
template <bool PREFETCH, bool ADD>
inline void wide_rows_upto8(const int16_t* x, int64_t xstride, const int8_t* wc, int64_t rows, int64_t len,
                            int64_t* out, int64_t stride) {
  static_assert(MADD_ROWS == 8, "one case per row count below");
  switch (rows) {
    case 1: return wide_rows<1, PREFETCH, ADD>(x, xstride, wc, len, out, stride);
    case 2: return wide_rows<2, PREFETCH, ADD>(x, xstride, wc, len, out, stride);
    case 3: return wide_rows<3, PREFETCH, ADD>(x, xstride, wc, len, out, stride);
    case 4: return wide_rows<4, PREFETCH, ADD>(x, xstride, wc, len, out, stride);
    case 5: return wide_rows<5, PREFETCH, ADD>(x, xstride, wc, len, out, stride);
    case 6: return wide_rows<6, PREFETCH, ADD>(x, xstride, wc, len, out, stride);
    case 7: return wide_rows<7, PREFETCH, ADD>(x, xstride, wc, len, out, stride);
    default: return wide_rows<8, PREFETCH, ADD>(x, xstride, wc, len, out, stride);
  }
}

// Columns c0..c1-1 of the int64 products of wide rows x (R, K) with an int8 weight (N, K), into
// acc[r * stride + c - c0] (the avx2 and avx512 routes). Up to MADD_ROWS rows (decode): one tile,
// each column one stream read once for all rows, in blocks of WIDE_K_BLOCK. More rows (prefill):
// blocks of MADD_COLUMNS columns (in L2), and per tile of rows, blocks of WIDE_K_TILE values of K
// (in L1) over the block's columns.
void products_wide_avx2(const int16_t* x, const int8_t* w, int64_t* acc, int64_t stride, int64_t rows, int64_t k,
                        int64_t c0, int64_t c1) {
  static_assert(WIDE_K_TILE <= WIDE_K_BLOCK, "a tile's K block must keep the int32 lanes exact");
  if (rows <= MADD_ROWS) {
    for (int64_t c = c0; c < c1; ++c) {
      const int8_t* wc = w + c * k;
      int64_t* out = acc + (c - c0);
      wide_rows_upto8<true, false>(x, k, wc, rows, std::min(k, WIDE_K_BLOCK), out, stride);
      for (int64_t i = WIDE_K_BLOCK; i < k; i += WIDE_K_BLOCK)
        wide_rows_upto8<true, true>(x + i, k, wc + i, rows, std::min(k - i, WIDE_K_BLOCK), out, stride);
    }
    return;
  }
  for (int64_t b0 = c0; b0 < c1; b0 += MADD_COLUMNS) {
    const int64_t b1 = std::min(b0 + MADD_COLUMNS, c1);
    for (int64_t r = 0; r < rows; r += MADD_ROWS) {
      const int64_t tile = std::min(MADD_ROWS, rows - r);
      for (int64_t i = 0; i < k; i += WIDE_K_TILE) {
        const int64_t len = std::min(k - i, WIDE_K_TILE);
        for (int64_t c = b0; c < b1; ++c) {
          int64_t* out = acc + r * stride + (c - c0);
          const int8_t* wc = w + c * k + i;
          const int16_t* xr = x + r * k + i;
          // The first tile fetches the block from memory (so it prefetches); later K blocks add.
          if (r == 0 && i > 0) wide_rows_upto8<true, true>(xr, k, wc, tile, len, out, stride);
          else if (r == 0) wide_rows_upto8<true, false>(xr, k, wc, tile, len, out, stride);
          else if (i > 0) wide_rows_upto8<false, true>(xr, k, wc, tile, len, out, stride);
          else wide_rows_upto8<false, false>(xr, k, wc, tile, len, out, stride);
        }
      }
    }
  }
}

#pragma GCC pop_options
#endif

// Whether every byte of x lies in [-127, 127] (the products_avx2 condition).
bool within_127(const int8_t* x, int64_t count) {
  bool ok = true;
  for (int64_t i = 0; i < count; ++i) ok &= x[i] != -128;
  return ok;
}

// The int32 products x . w[c] of int8 rows x (R, K) with the rows of an int8 weight (N, K), by
// the route in use (all give the same integers): VNNI byte products; without VNNI, the AVX2
// byte products for rows in [-127, 127] (every row the engine makes), 16-bit ones otherwise
// and on the scalar route; on aarch64, NEON's (any row). `columns` writes those of columns c0..c1-1 to acc[r * stride + c - c0].
//
// No route hands products to a library: torch._int_mm runs ~3.5 G int-ops/s without VNNI or
// AMX, and float32 BLAS products over K-chunks of 1024 (exact: partial sums below 2**24) ran at
// 5 GFLOP/s on the AMD development machine (MKL), against 60-80 G int-ops/s for these loops.
class Products {
 public:
  Products(const torch::Tensor& x, const torch::Tensor& w)
      : rows(x.size(0)), k(x.size(1)), n(w.size(0)), x_(x.data_ptr<int8_t>()), w_(w.data_ptr<int8_t>()) {
    route_ = Route::int16;
#if defined(__x86_64__)
    if (isa == ISA_AVX512VNNI) {
      route_ = Route::vnni;
      x_sums_.assign(rows, 0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < k; ++i) x_sums_[r] += x_[r * k + i];
    } else if (isa >= ISA_AVX2 && within_127(x_, rows * k)) {
      route_ = Route::avx2;
    }
#elif defined(__aarch64__)
    if (isa == ISA_NEON_DOTPROD) route_ = Route::neon_dotprod;
    else if (isa == ISA_NEON) route_ = Route::neon;
#endif
    if (route_ == Route::int16) x16_.assign(x_, x_ + rows * k);
  }

  void columns(int64_t c0, int64_t c1, int32_t* acc, int64_t stride) const {
    switch (route_) {
#if defined(__x86_64__)
      case Route::vnni: return products_vnni(x_, x_sums_.data(), w_, acc, stride, rows, k, c0, c1);
      case Route::avx2: return products_avx2(x_, w_, acc, stride, rows, k, c0, c1);
#elif defined(__aarch64__)
      case Route::neon_dotprod: return verinfer_neon::products_sdot(x_, w_, acc, stride, rows, k, c0, c1);
      case Route::neon: return verinfer_neon::products_mull(x_, w_, acc, stride, rows, k, c0, c1);
#endif
      default: return products_int16(x16_.data(), w_, acc, stride, rows, k, c0, c1);
    }
  }

  // Blocks of COLUMN_BLOCK columns per parallel task: at least ~64 KiB of weight reads.
  int64_t blocks_per_task() const { return std::max<int64_t>(1, 65536 / std::max<int64_t>(COLUMN_BLOCK * k * rows, 1)); }

  const int64_t rows, k, n;

 private:
  enum class Route { vnni, avx2, neon, neon_dotprod, int16 };
  Route route_;
  const int8_t* x_;
  const int8_t* w_;
  std::vector<int32_t> x_sums_;
  std::vector<int16_t> x16_;
};

// fp.int8_matmul(x, w.t()) for x (R, K) and a row-major weight w (N, K): (R, N) int32.
torch::Tensor int8_matmul(const torch::Tensor& x, const torch::Tensor& w) {
  check(x, torch::kInt8, "x");
  check(w, torch::kInt8, "weight");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "x (R, K) and weight (N, K) expected");
  const Products products(x, w);
  const int64_t n = products.n;
  auto out = torch::empty({products.rows, n}, x.options().dtype(torch::kInt32));
  int32_t* op = out.data_ptr<int32_t>();
  const int64_t blocks = (n + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
  at::parallel_for(0, blocks, products.blocks_per_task(), [&](int64_t b0, int64_t b1) {
    const int64_t c0 = b0 * COLUMN_BLOCK, c1 = std::min(b1 * COLUMN_BLOCK, n);
    products.columns(c0, c1, op + c0, n);
  });
  return out;
}

// Halves of wide rows x (R, K) int16 for fp.wide_matmul: (2R, K) int8, rows [hi; lo] with
// x = 128 hi + lo, split by sign and magnitude (hi = sign(x) (|x| >> 7), lo = sign(x) (|x| & 127))
// so that both lie in [-127, 127] for |x| <= WIDE_LEVELS (the VNNI, scalar and NEON routes; the
// avx2 and avx512 routes take wide rows whole, products_wide_avx2). The split is the kernels'
// own: any split gives the same 128 (hi . w) + lo . w = x . w, which is all that leaves.
torch::Tensor wide_halves(const torch::Tensor& x) {
  check(x, torch::kInt16, "x");
  TORCH_CHECK(x.dim() == 2, "x (R, K) expected");
  const int64_t count = x.numel();
  auto halves = torch::empty({2 * x.size(0), x.size(1)}, x.options().dtype(torch::kInt8));
  const int16_t* xp = x.data_ptr<int16_t>();
  int8_t* hi = halves.data_ptr<int8_t>();
  int8_t* lo = hi + count;
  for (int64_t i = 0; i < count; ++i) {
    TORCH_CHECK(xp[i] >= -WIDE_LEVELS && xp[i] <= WIDE_LEVELS, "wide rows must lie within +-WIDE_LEVELS");
    const int magnitude = xp[i] < 0 ? -xp[i] : xp[i];
    const int sign = xp[i] < 0 ? -1 : 1;
    hi[i] = static_cast<int8_t>(sign * (magnitude >> 7));
    lo[i] = static_cast<int8_t>(sign * (magnitude & 127));
  }
  return halves;
}

// One output row of model.Linear over `count` columns: shift_round(acc * (xm * mant),
// xe + shift_base) (+ bias), or with a residual row, clamp(residual + that, +-ACT_LIMIT).
ROUTED_BODY void dequantize_row_body(const int32_t* acc, int64_t count, int64_t xm, int64_t xe, const int64_t* mant,
                    const int64_t* shift_base, const int64_t* bias, const int64_t* residual, int64_t* out) {
  for (int64_t c = 0; c < count; ++c) {
    int64_t v = shift_round_var(static_cast<int64_t>(acc[c]) * (xm * mant[c]), xe + shift_base[c]);
    if (bias) v += bias[c];
    out[c] = residual ? clamp(residual[c] + v, -ACT_LIMIT, ACT_LIMIT) : v;
  }
}
ISA_ROUTES(void, dequantize_row, (const int32_t* acc, int64_t count, int64_t xm, int64_t xe, const int64_t* mant, const int64_t* shift_base, const int64_t* bias, const int64_t* residual, int64_t* out), (acc, count, xm, xe, mant, shift_base, bias, residual, out))

// The same for a wide row, from the products of its halves (acc = 128 hi + lo):
// shift_round(shift_round(acc * xm, WIDE_SCALE_SHIFT) * mant, xe - WIDE_SCALE_SHIFT + shift_base).
inline __attribute__((always_inline)) int64_t dequantize_wide(int64_t acc, int64_t xm, int64_t xe, int64_t mant,
                                                               int64_t shift_base) {
  return shift_round_var(shift_round_const(acc * xm, WIDE_SCALE_SHIFT) * mant, xe - WIDE_SCALE_SHIFT + shift_base);
}

ROUTED_BODY void dequantize_wide_row_body(const int32_t* hi, const int32_t* lo, int64_t count, int64_t xm, int64_t xe,
                         const int64_t* mant, const int64_t* shift_base, const int64_t* bias,
                         const int64_t* residual, int64_t* out) {
  for (int64_t c = 0; c < count; ++c) {
    int64_t v = dequantize_wide(int64_t{128} * hi[c] + lo[c], xm, xe, mant[c], shift_base[c]);
    if (bias) v += bias[c];
    out[c] = residual ? clamp(residual[c] + v, -ACT_LIMIT, ACT_LIMIT) : v;
  }
}
ISA_ROUTES(void, dequantize_wide_row, (const int32_t* hi, const int32_t* lo, int64_t count, int64_t xm, int64_t xe, const int64_t* mant, const int64_t* shift_base, const int64_t* bias, const int64_t* residual, int64_t* out), (hi, lo, count, xm, xe, mant, shift_base, bias, residual, out))

// The same from a wide row's whole int64 products (products_wide_avx2).
ROUTED_BODY void dequantize_wide64_row_body(const int64_t* acc, int64_t count, int64_t xm, int64_t xe,
                                            const int64_t* mant, const int64_t* shift_base, const int64_t* bias,
                                            const int64_t* residual, int64_t* out) {
  for (int64_t c = 0; c < count; ++c) {
    int64_t v = dequantize_wide(acc[c], xm, xe, mant[c], shift_base[c]);
    if (bias) v += bias[c];
    out[c] = residual ? clamp(residual[c] + v, -ACT_LIMIT, ACT_LIMIT) : v;
  }
}
ISA_ROUTES(void, dequantize_wide64_row, (const int64_t* acc, int64_t count, int64_t xm, int64_t xe, const int64_t* mant, const int64_t* shift_base, const int64_t* bias, const int64_t* residual, int64_t* out), (acc, count, xm, xe, mant, shift_base, bias, residual, out))

// model.Linear on x (..., K), int8 or wide (int16), with row scales (..., 1) and the (K, N)
// transposed view of a row-major weight (N, K) with column scales: (..., N) int64; with a
// residual (..., N), the clamped sum (the residual update of a decoder layer). Each task takes
// the products of its columns and scales them while they are in cache. A wide row is multiplied
// whole on the avx2 and avx512 routes (products_wide_avx2), elsewhere as two halves that are two
// rows of one product; either way the weight is read once per row.
torch::Tensor linear(const torch::Tensor& x_in, const torch::Tensor& xm_in, const torch::Tensor& xe_in,
                     const torch::Tensor& weight_t, const torch::Tensor& mant_in,
                     const torch::Tensor& shift_base_in, const c10::optional<torch::Tensor>& bias_in,
                     const c10::optional<torch::Tensor>& residual_in) {
  TORCH_CHECK(weight_t.dim() == 2 && x_in.dim() >= 1 && x_in.size(-1) == weight_t.size(0),
              "x (..., K) and weight_t (K, N) expected");
  const torch::Tensor w = weight_t.t().contiguous();  // a view unless the weight is not row-major
  const torch::Tensor x = x_in.contiguous(), xm = xm_in.contiguous(), xe = xe_in.contiguous();
  const torch::Tensor mant = mant_in.contiguous(), shift_base = shift_base_in.contiguous();
  const bool wide = x.scalar_type() == torch::kInt16;
  check(x, wide ? torch::kInt16 : torch::kInt8, "x");
  check(w, torch::kInt8, "weight");
  check(xm, torch::kInt64, "xm");
  check(xe, torch::kInt64, "xe");
  check(mant, torch::kInt64, "mant");
  check(shift_base, torch::kInt64, "shift_base");
  const int64_t k = w.size(1), n = w.size(0), rows = x.numel() / std::max<int64_t>(k, 1);
  TORCH_CHECK(xm.numel() == rows && xe.numel() == rows, "one row scale per row is needed");
  TORCH_CHECK(mant.numel() == n && shift_base.numel() == n, "one weight scale per column is needed");
  torch::Tensor bias, residual;
  if (bias_in) {
    bias = bias_in->contiguous();
    check(bias, torch::kInt64, "bias");
    TORCH_CHECK(bias.numel() == n, "one bias per column is needed");
  }
  if (residual_in) {
    residual = residual_in->contiguous();
    check(residual, torch::kInt64, "residual");
    TORCH_CHECK(residual.numel() == rows * n, "residual must match the output");
  }
  auto out = torch::empty(with_last(x, n), x.options().dtype(torch::kInt64));
  const int64_t* xmp = xm.data_ptr<int64_t>();
  const int64_t* xep = xe.data_ptr<int64_t>();
  const int64_t* mp = mant.data_ptr<int64_t>();
  const int64_t* sp = shift_base.data_ptr<int64_t>();
  const int64_t* bp = bias.defined() ? bias.data_ptr<int64_t>() : nullptr;
  const int64_t* res = residual.defined() ? residual.data_ptr<int64_t>() : nullptr;
  int64_t* op = out.data_ptr<int64_t>();
  // Columns scaled per pass: the int32 products of a pass stay in L1.
  constexpr int64_t pass = 16 * COLUMN_BLOCK;
  const int64_t blocks = (n + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
#if defined(__x86_64__)
  // Wide rows on the avx2 and avx512 routes: whole int16 products (products_wide_avx2), no halves.
  if (wide && (isa == ISA_AVX2 || isa == ISA_AVX512)) {
    const int16_t* xp = x.data_ptr<int16_t>();
    const int8_t* wp = w.data_ptr<int8_t>();
    bool within = true;  // the bound that keeps products_wide_avx2's int32 lanes exact
    for (int64_t i = 0; i < rows * k; ++i) within &= xp[i] >= -WIDE_LEVELS && xp[i] <= WIDE_LEVELS;
    TORCH_CHECK(within, "wide rows must lie within +-WIDE_LEVELS");
    const int64_t per_task = std::max<int64_t>(1, 65536 / std::max<int64_t>(COLUMN_BLOCK * k * rows, 1));
    at::parallel_for(0, blocks, per_task, [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> acc(rows * pass);
      for (int64_t c0 = b0 * COLUMN_BLOCK, end = std::min(b1 * COLUMN_BLOCK, n); c0 < end; c0 += pass) {
        const int64_t c1 = std::min(c0 + pass, end);
        products_wide_avx2(xp, wp, acc.data(), pass, rows, k, c0, c1);
        for (int64_t r = 0; r < rows; ++r)
          dequantize_wide64_row(acc.data() + r * pass, c1 - c0, xmp[r], xep[r], mp + c0, sp + c0,
                                bp ? bp + c0 : nullptr, res ? res + r * n + c0 : nullptr, op + r * n + c0);
      }
    });
    return out;
  }
#endif
  const torch::Tensor x8 = wide ? wide_halves(x.view({rows, k})) : x.view({rows, k});
  const Products products(x8, w);
  at::parallel_for(0, blocks, products.blocks_per_task(), [&](int64_t b0, int64_t b1) {
    std::vector<int32_t> acc(products.rows * pass);
    for (int64_t c0 = b0 * COLUMN_BLOCK, end = std::min(b1 * COLUMN_BLOCK, n); c0 < end; c0 += pass) {
      const int64_t c1 = std::min(c0 + pass, end);
      products.columns(c0, c1, acc.data(), pass);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t* bias_c = bp ? bp + c0 : nullptr;
        const int64_t* res_c = res ? res + r * n + c0 : nullptr;
        if (wide) {
          dequantize_wide_row(acc.data() + r * pass, acc.data() + (rows + r) * pass, c1 - c0, xmp[r], xep[r],
                              mp + c0, sp + c0, bias_c, res_c, op + r * n + c0);
        } else {
          dequantize_row(acc.data() + r * pass, c1 - c0, xmp[r], xep[r], mp + c0, sp + c0, bias_c, res_c,
                         op + r * n + c0);
        }
      }
    }
  });
  return out;
}

// model._rotate of one head of 2 half values (rotate-half layout) with cos c and sin s:
// out (int64 for q, int32 for the key cache) in QK_FRAC bits, saturated at QK_LIMIT.
template <typename Out>
inline void rotate_half(const int64_t* x, const int64_t* c, const int64_t* s, int64_t half, Out* out) {
  constexpr int64_t in_limit = int64_t{1} << (ACT_FRAC + 10);
  constexpr int64_t out_shift = ROPE_FRAC + ACT_FRAC - QK_FRAC;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t x1 = clamp(x[i], -in_limit, in_limit), x2 = clamp(x[i + half], -in_limit, in_limit);
    out[i] = static_cast<Out>(clamp(shift_round_const(x1 * c[i] - x2 * s[i], out_shift), -QK_LIMIT, QK_LIMIT));
    out[i + half] = static_cast<Out>(clamp(shift_round_const(x2 * c[i] + x1 * s[i], out_shift), -QK_LIMIT, QK_LIMIT));
  }
}

ROUTED_BODY void rotate_query_body(const int64_t* x, const int64_t* c, const int64_t* s, int64_t half, int64_t* out) {
  rotate_half(x, c, s, half, out);
}
ISA_ROUTES(void, rotate_query, (const int64_t* x, const int64_t* c, const int64_t* s, int64_t half, int64_t* out),
           (x, c, s, half, out))

ROUTED_BODY void rotate_key_body(const int64_t* x, const int64_t* c, const int64_t* s, int64_t half, int32_t* out) {
  rotate_half(x, c, s, half, out);
}
ISA_ROUTES(void, rotate_key, (const int64_t* x, const int64_t* c, const int64_t* s, int64_t half, int32_t* out),
           (x, c, s, half, out))

// model._rope_to_cache: rotate q and k of qkv (B, T, (H + 2 n_kv) hd) at `positions` (B, T),
// write k and clamped v to cache row rows[b]; returns the rotated q (B, T, H, hd).
torch::Tensor rope_to_cache(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                            const torch::Tensor& positions, const torch::Tensor& rows,
                            torch::Tensor k_cache, torch::Tensor v_cache, int64_t heads) {
  check(qkv, torch::kInt64, "qkv");
  check(cos, torch::kInt64, "cos");
  check(sin, torch::kInt64, "sin");
  check(positions, torch::kInt64, "positions");
  check(rows, torch::kInt64, "rows");
  check(k_cache, torch::kInt32, "k_cache");
  check(v_cache, torch::kInt32, "v_cache");
  TORCH_CHECK(qkv.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "expected qkv (B, T, width) and caches (rows, n_kv, S, hd)");
  const int64_t bsz = qkv.size(0), t = qkv.size(1);
  const int64_t cache_rows = k_cache.size(0), n_kv = k_cache.size(1), span = k_cache.size(2),
                hd = k_cache.size(3), half = hd / 2;
  TORCH_CHECK(qkv.size(2) == (heads + 2 * n_kv) * hd, "qkv width does not match the heads");
  TORCH_CHECK(positions.size(0) == bsz && positions.size(1) == t && rows.numel() == bsz,
              "positions must be (B, T) and rows (B,)");
  TORCH_CHECK(cos.size(-1) == half && sin.sizes() == cos.sizes(), "rope tables must be (P, hd / 2)");
  const int64_t table_len = cos.size(0);
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* rp = rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < bsz * t; ++i)
    TORCH_CHECK(pos[i] >= 0 && pos[i] < std::min(span, table_len), "position ", pos[i], " outside the cache");
  for (int64_t b = 0; b < bsz; ++b)
    TORCH_CHECK(rp[b] >= 0 && rp[b] < cache_rows, "cache row ", rp[b], " does not exist");
  auto q = torch::empty({bsz, t, heads, hd}, qkv.options());
  const int64_t* src = qkv.data_ptr<int64_t>();
  const int64_t* cp = cos.data_ptr<int64_t>();
  const int64_t* snp = sin.data_ptr<int64_t>();
  int64_t* qp = q.data_ptr<int64_t>();
  int32_t* kp = k_cache.data_ptr<int32_t>();
  int32_t* vp = v_cache.data_ptr<int32_t>();
  const int64_t width = (heads + 2 * n_kv) * hd;
  at::parallel_for(0, bsz * t, grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / t, p = pos[bt];
      const int64_t* x = src + bt * width;
      const int64_t* c = cp + p * half;
      const int64_t* s = snp + p * half;
      for (int64_t h = 0; h < heads; ++h) rotate_query(x + h * hd, c, s, half, qp + (bt * heads + h) * hd);
      for (int64_t g = 0; g < n_kv; ++g) {
        const int64_t at = ((rp[b] * n_kv + g) * span + p) * hd;
        rotate_key(x + (heads + g) * hd, c, s, half, kp + at);
        const int64_t* v = x + (heads + n_kv + g) * hd;
        for (int64_t i = 0; i < hd; ++i) vp[at + i] = static_cast<int32_t>(clamp(v[i], -V_LIMIT, V_LIMIT));
      }
    }
  });
  return q;
}

// dots[j] = q . keys[j] for j < count, exact in int64 (|q|, |k| < 2**20, so |dot| < 2**48);
// four keys per pass share the loads of q.
ROUTED_BODY void key_dots_body(const int32_t* q, const int32_t* keys, int64_t count, int64_t hd, int64_t* dots) {
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const int32_t* k0 = keys + j * hd;
    const int32_t* k1 = k0 + hd;
    const int32_t* k2 = k1 + hd;
    const int32_t* k3 = k2 + hd;
    int64_t d0 = 0, d1 = 0, d2 = 0, d3 = 0;
    for (int64_t i = 0; i < hd; ++i) {
      const int64_t qi = q[i];
      d0 += qi * k0[i];
      d1 += qi * k1[i];
      d2 += qi * k2[i];
      d3 += qi * k3[i];
    }
    dots[j] = d0;
    dots[j + 1] = d1;
    dots[j + 2] = d2;
    dots[j + 3] = d3;
  }
  for (; j < count; ++j) {
    const int32_t* kj = keys + j * hd;
    int64_t dot = 0;
    for (int64_t i = 0; i < hd; ++i) dot += static_cast<int64_t>(q[i]) * kj[i];
    dots[j] = dot;
  }
}
ISA_ROUTES(void, key_dots, (const int32_t* q, const int32_t* keys, int64_t count, int64_t hd, int64_t* dots), (q, keys, count, hd, dots))

// acc[i] += sum_j probs[j] * values[j][i], exact in int64 (probs <= 2**20, |v| < 2**26);
// four keys per pass share the loads and stores of acc.
ROUTED_BODY void mix_values_body(const int32_t* probs, const int32_t* values, int64_t count, int64_t hd, int64_t* acc) {
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const int64_t p0 = probs[j], p1 = probs[j + 1], p2 = probs[j + 2], p3 = probs[j + 3];
    const int32_t* v0 = values + j * hd;
    const int32_t* v1 = v0 + hd;
    const int32_t* v2 = v1 + hd;
    const int32_t* v3 = v2 + hd;
    for (int64_t i = 0; i < hd; ++i) acc[i] += p0 * v0[i] + p1 * v1[i] + p2 * v2[i] + p3 * v3[i];
  }
  for (; j < count; ++j) {
    const int64_t p = probs[j];
    const int32_t* vj = values + j * hd;
    for (int64_t i = 0; i < hd; ++i) acc[i] += p * vj[i];
  }
}
ISA_ROUTES(void, mix_values, (const int32_t* probs, const int32_t* values, int64_t count, int64_t hd, int64_t* acc), (probs, values, count, hd, acc))

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")

// With AVX-512, attention's products go through float64 multiply-adds, exactly, as
// fp.exact_float_matmul takes them: rotated queries and keys are saturated below 2**20
// (QK_LIMIT; the cache holds only what rope_to_cache wrote), so with head_dim <= 256 every partial
// sum of q . k stays below 2**48; probabilities (<= 2**20, summing to < 2**21) times values
// (< 2**26, V_LIMIT) stay below 2**47. Every product and partial sum is then an integer that
// float64 holds exactly, in any order; one multiply-add replaces int64's widen, multiply, add.
// Both need head_dim a multiple of 8 (one vector).

// key_dots with q in float64.
void key_dots_f64(const double* q, const int32_t* keys, int64_t count, int64_t hd, int64_t* dots) {
  auto row = [&](const int32_t* k, int64_t i) { return _mm512_cvtepi32_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + i))); };
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const int32_t* k0 = keys + j * hd;
    __m512d d0 = _mm512_setzero_pd(), d1 = d0, d2 = d0, d3 = d0;
    for (int64_t i = 0; i < hd; i += 8) {
      const __m512d qi = _mm512_loadu_pd(q + i);
      d0 = _mm512_fmadd_pd(qi, row(k0, i), d0);
      d1 = _mm512_fmadd_pd(qi, row(k0 + hd, i), d1);
      d2 = _mm512_fmadd_pd(qi, row(k0 + 2 * hd, i), d2);
      d3 = _mm512_fmadd_pd(qi, row(k0 + 3 * hd, i), d3);
    }
    dots[j] = static_cast<int64_t>(_mm512_reduce_add_pd(d0));
    dots[j + 1] = static_cast<int64_t>(_mm512_reduce_add_pd(d1));
    dots[j + 2] = static_cast<int64_t>(_mm512_reduce_add_pd(d2));
    dots[j + 3] = static_cast<int64_t>(_mm512_reduce_add_pd(d3));
  }
  for (; j < count; ++j) {
    __m512d d = _mm512_setzero_pd();
    for (int64_t i = 0; i < hd; i += 8) d = _mm512_fmadd_pd(_mm512_loadu_pd(q + i), row(keys + j * hd, i), d);
    dots[j] = static_cast<int64_t>(_mm512_reduce_add_pd(d));
  }
}

// mix_values into int64 acc (overwritten, not added to), 32 lanes of the head at a time held
// in registers over all keys.
void mix_values_f64(const int32_t* probs, const int32_t* values, int64_t count, int64_t hd, int64_t* acc) {
  for (int64_t i0 = 0; i0 < hd; i0 += 32) {
    const int64_t width = std::min<int64_t>(32, hd - i0) / 8;
    __m512d a[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    for (int64_t j = 0; j < count; ++j) {
      const __m512d p = _mm512_set1_pd(static_cast<double>(probs[j]));
      const int32_t* v = values + j * hd + i0;
      for (int64_t u = 0; u < width; ++u)
        a[u] = _mm512_fmadd_pd(p, _mm512_cvtepi32_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 8 * u))), a[u]);
    }
    for (int64_t u = 0; u < width; ++u) _mm512_storeu_si512(acc + i0 + 8 * u, _mm512_cvtpd_epi64(a[u]));
  }
}

// w[j] = exp_neg(max(top - w[j], 0)) for j < count, 8 keys per vector with the tables read by
// gathers; returns their sum. The same integer steps as exp_neg, lane by lane.
int64_t exp_weights_avx512(int64_t* w, int64_t count, int64_t top, const Exp2Tables& tables) {
  const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi64(1), most = _mm512_set1_epi64(62);
  const __m512i vtop = _mm512_set1_epi64(top), cap = _mm512_set1_epi64(int64_t{64} << ACT_FRAC);
  const __m512i log2e = _mm512_set1_epi64(tables.log2e);
  const __m512i low_bits = _mm512_set1_epi64((int64_t{1} << ACT_FRAC) - 1), byte = _mm512_set1_epi64(0xFF);
  // shift_round_const(x, 30) for the Q30 products (both fractions are 30 bits).
  auto round30 = [&](__m512i x) { return _mm512_srai_epi64(_mm512_add_epi64(_mm512_srai_epi64(x, 29), one), 1); };
  static_assert(LOG2E_FRAC == 30 && EXP_FRAC == 30, "round30 assumes both");
  __m512i total = zero;
  for (int64_t j = 0; j < count; j += 8) {
    const __mmask8 lanes = count - j >= 8 ? 0xFF : static_cast<__mmask8>((1u << (count - j)) - 1);
    const __m512i d = _mm512_min_epi64(_mm512_max_epi64(_mm512_sub_epi64(vtop, _mm512_maskz_loadu_epi64(lanes, w + j)), zero), cap);
    const __m512i t = round30(_mm512_mullo_epi64(d, log2e));
    const __m512i whole = _mm512_min_epi64(_mm512_srai_epi64(t, ACT_FRAC), most);
    const __m512i frac = _mm512_and_si512(t, low_bits);  // indices below stay in [0, 256)
    const __m512i hi = _mm512_i64gather_epi64(_mm512_srli_epi64(frac, 8), tables.hi, 8);
    const __m512i lo = _mm512_i64gather_epi64(_mm512_and_si512(frac, byte), tables.lo, 8);
    const __m512i mantissa = round30(_mm512_mullo_epi64(hi, lo));
    // shift_round_var(mantissa, whole): both shifts clamped to [0, 62].
    const __m512i less = _mm512_sub_epi64(whole, one);
    const __m512i up = _mm512_min_epi64(_mm512_max_epi64(_mm512_sub_epi64(zero, less), zero), most);
    const __m512i down = _mm512_min_epi64(_mm512_max_epi64(less, zero), most);
    const __m512i shifted = _mm512_srav_epi64(_mm512_sllv_epi64(mantissa, up), down);
    const __m512i e = _mm512_maskz_mov_epi64(lanes, _mm512_srai_epi64(_mm512_add_epi64(shifted, one), 1));
    _mm512_mask_storeu_epi64(w + j, lanes, e);
    total = _mm512_add_epi64(total, e);
  }
  return _mm512_reduce_add_epi64(total);
}

#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")

// key_dots_f64 and mix_values_f64 in 4 float64 lanes (AVX2 with FMA), for head_dim a multiple
// of 4: the same exact integers (the bounds above), in vectors half as wide.
void key_dots_f64_avx2(const double* q, const int32_t* keys, int64_t count, int64_t hd, int64_t* dots) {
  auto row = [&](const int32_t* k, int64_t i) { return _mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k + i))); };
  auto total = [](__m256d v) {
    const __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return static_cast<int64_t>(_mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair))));
  };
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const int32_t* k0 = keys + j * hd;
    __m256d d0 = _mm256_setzero_pd(), d1 = d0, d2 = d0, d3 = d0;
    for (int64_t i = 0; i < hd; i += 4) {
      const __m256d qi = _mm256_loadu_pd(q + i);
      d0 = _mm256_fmadd_pd(qi, row(k0, i), d0);
      d1 = _mm256_fmadd_pd(qi, row(k0 + hd, i), d1);
      d2 = _mm256_fmadd_pd(qi, row(k0 + 2 * hd, i), d2);
      d3 = _mm256_fmadd_pd(qi, row(k0 + 3 * hd, i), d3);
    }
    dots[j] = total(d0);
    dots[j + 1] = total(d1);
    dots[j + 2] = total(d2);
    dots[j + 3] = total(d3);
  }
  for (; j < count; ++j) {
    __m256d d = _mm256_setzero_pd();
    for (int64_t i = 0; i < hd; i += 4) d = _mm256_fmadd_pd(_mm256_loadu_pd(q + i), row(keys + j * hd, i), d);
    dots[j] = total(d);
  }
}

void mix_values_f64_avx2(const int32_t* probs, const int32_t* values, int64_t count, int64_t hd, int64_t* acc) {
  for (int64_t i0 = 0; i0 < hd; i0 += 16) {
    const int64_t width = std::min<int64_t>(16, hd - i0) / 4;
    __m256d a[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    for (int64_t j = 0; j < count; ++j) {
      const __m256d p = _mm256_set1_pd(static_cast<double>(probs[j]));
      const int32_t* v = values + j * hd + i0;
      for (int64_t u = 0; u < width; ++u)
        a[u] = _mm256_fmadd_pd(p, _mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 4 * u))), a[u]);
    }
    double lanes[16];
    for (int64_t u = 0; u < width; ++u) _mm256_storeu_pd(lanes + 4 * u, a[u]);
    for (int64_t i = 0; i < 4 * width; ++i) acc[i0 + i] = static_cast<int64_t>(lanes[i]);
  }
}

#pragma GCC pop_options
#endif

// The attention probabilities (fp.softmax, PROB_FRAC bits) of one query from its key dots
// (overwritten with the exp weights). Plain loops over the keys, so they vectorize; with `avx512`
// (AVX-512 only) the exp weights too, by exp_weights_avx512.
ROUTED_BODY void softmax_row_body(int64_t* w, int64_t keys, int64_t inv_sqrt_mant, int64_t inv_sqrt_exp,
                 const Exp2Tables& tables, bool avx512, int32_t* probs) {
  constexpr int64_t dot_shift = 2 * QK_FRAC - ACT_FRAC;
  int64_t top = INT64_MIN;
  for (int64_t j = 0; j < keys; ++j) {
    w[j] = shift_round_const(shift_round_const(w[j], dot_shift) * inv_sqrt_mant, inv_sqrt_exp);
    top = std::max(top, w[j]);
  }
  int64_t total = 0;
#if defined(__x86_64__)
  if (avx512) {
    total = exp_weights_avx512(w, keys, top, tables);
  } else
#endif
  {
    for (int64_t j = 0; j < keys; ++j) {
      w[j] = exp_neg(std::max<int64_t>(top - w[j], 0), tables);
      total += w[j];
    }
  }
  // Each probability lies in [0, 2**PROB_FRAC]: 32 bits hold it. Weights are at most 2**30
  // (and the top one is 2**30), so for total < 2**50 the operands of div_round's floor division
  // stay below 2**52.
  if (total < (int64_t{1} << 50)) {
    const double inv = 1.0 / static_cast<double>(2 * total);
    for (int64_t j = 0; j < keys; ++j)
      probs[j] = static_cast<int32_t>(floor_div_fast(2 * (w[j] << PROB_FRAC) + total, 2 * total, inv));
    return;
  }
  for (int64_t j = 0; j < keys; ++j) probs[j] = static_cast<int32_t>(div_round(w[j] << PROB_FRAC, total));
}
ISA_ROUTES(void, softmax_row, (int64_t* w, int64_t keys, int64_t inv_sqrt_mant, int64_t inv_sqrt_exp, const Exp2Tables& tables, bool avx512, int32_t* probs), (w, keys, inv_sqrt_mant, inv_sqrt_exp, tables, avx512, probs))

// model._attend: causal attention of rotated q (B, T, H, hd) over cache rows rows[b] (keys at
// positions 0..positions[b, t]), then fp.quantize_rows of the mixed heads (B, T, H hd). The
// products are float64 ones on the avx2 and avx512 routes, int64 ones on the scalar route (the
// same integers).
std::vector<torch::Tensor> attend(const torch::Tensor& q, const torch::Tensor& k_cache,
                                  const torch::Tensor& v_cache, const torch::Tensor& positions,
                                  const torch::Tensor& rows, int64_t inv_sqrt_mant, int64_t inv_sqrt_exp,
                                  const torch::Tensor& hi, const torch::Tensor& lo, int64_t log2e) {
  check(q, torch::kInt64, "q");
  check(k_cache, torch::kInt32, "k_cache");
  check(v_cache, torch::kInt32, "v_cache");
  check(positions, torch::kInt64, "positions");
  check(rows, torch::kInt64, "rows");
  const Exp2Tables tables = exp2_tables(hi, lo, log2e);
  TORCH_CHECK(q.dim() == 4 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "expected q (B, T, H, hd) and caches (rows, n_kv, S, hd)");
  const int64_t bsz = q.size(0), t = q.size(1), heads = q.size(2), hd = q.size(3);
  const int64_t cache_rows = k_cache.size(0), n_kv = k_cache.size(1), span = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == hd && heads % n_kv == 0, "q and the caches disagree on heads");
  TORCH_CHECK(positions.size(0) == bsz && positions.size(1) == t && rows.numel() == bsz,
              "positions must be (B, T) and rows (B,)");
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* rp = rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < bsz * t; ++i)
    TORCH_CHECK(pos[i] >= 0 && pos[i] < span, "position ", pos[i], " outside the cache");
  for (int64_t b = 0; b < bsz; ++b)
    TORCH_CHECK(rp[b] >= 0 && rp[b] < cache_rows, "cache row ", rp[b], " does not exist");
  const int64_t group = heads / n_kv, width = heads * hd;
  // Rotated queries are saturated below 2**20 (QK_LIMIT): 32 bits hold them, which lets the
  // dot products use 32 x 32 -> 64-bit vector multiplies, or float64 ones (see key_dots_f64).
#if defined(__x86_64__)
  const bool f64 = (isa >= ISA_AVX512 ? hd % 8 == 0 : isa == ISA_AVX2 && hd % 4 == 0) && hd <= 256;
#else
  const bool f64 = false;
#endif
  const int64_t* q64 = q.data_ptr<int64_t>();
  std::vector<int32_t> q32(q.numel());
  std::vector<double> qf(f64 ? q.numel() : 0);
  for (int64_t i = 0; i < q.numel(); ++i) {
    TORCH_CHECK(q64[i] >= -QK_LIMIT && q64[i] <= QK_LIMIT, "rotated queries must lie within +-QK_LIMIT");
    q32[i] = static_cast<int32_t>(q64[i]);
    if (f64) qf[i] = static_cast<double>(q64[i]);
  }
  auto mixed = torch::empty({bsz, t, width}, q.options());
  const int32_t* kp = k_cache.data_ptr<int32_t>();
  const int32_t* vp = v_cache.data_ptr<int32_t>();
  int64_t* mp = mixed.data_ptr<int64_t>();
  int64_t longest = 1;
  for (int64_t i = 0; i < bsz * t; ++i) longest = std::max(longest, pos[i] + 1);
  // One task per (b, t, head): its row of scores, softmax and weighted sum of values.
  at::parallel_for(0, bsz * t * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> w(longest), acc(hd);
    std::vector<int32_t> probs(longest);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bt = task / heads, h = task - bt * heads, b = bt / t;
      const int64_t keys = pos[bt] + 1;
      const int64_t base = (rp[b] * n_kv + h / group) * span * hd;
#if defined(__x86_64__)
      if (f64 && isa >= ISA_AVX512) {
        key_dots_f64(qf.data() + task * hd, kp + base, keys, hd, w.data());
        softmax_row(w.data(), keys, inv_sqrt_mant, inv_sqrt_exp, tables, true, probs.data());
        mix_values_f64(probs.data(), vp + base, keys, hd, acc.data());
      } else if (f64) {
        key_dots_f64_avx2(qf.data() + task * hd, kp + base, keys, hd, w.data());
        softmax_row(w.data(), keys, inv_sqrt_mant, inv_sqrt_exp, tables, false, probs.data());
        mix_values_f64_avx2(probs.data(), vp + base, keys, hd, acc.data());
      } else
#endif
      {
        key_dots(q32.data() + task * hd, kp + base, keys, hd, w.data());
        softmax_row(w.data(), keys, inv_sqrt_mant, inv_sqrt_exp, tables, false, probs.data());
        std::fill(acc.begin(), acc.end(), 0);
        mix_values(probs.data(), vp + base, keys, hd, acc.data());
      }
      int64_t* out = mp + bt * width + h * hd;
      for (int64_t i = 0; i < hd; ++i) out[i] = shift_round_const(acc[i], PROB_FRAC);
    }
  });
  auto oq = torch::empty({bsz, t, width}, q.options().dtype(torch::kInt8));
  auto om = torch::empty({bsz, t, 1}, q.options());
  auto oe = torch::empty({bsz, t, 1}, q.options());
  int8_t* oqp = oq.data_ptr<int8_t>();
  int64_t* omp = om.data_ptr<int64_t>();
  int64_t* oep = oe.data_ptr<int64_t>();
  at::parallel_for(0, bsz * t, grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      quantize_row(mp + r * width, width, ACT_FRAC, oqp + r * width, omp + r, oep + r);
  });
  return {oq, om, oe};
}

// model._swiglu_quantize: silu(gate) * clamp(up) per row of gate_up (..., 2F), saturated and
// quantized per row for the down projection: (wide q int16 (..., F), mant (..., 1), exp (..., 1)).
std::vector<torch::Tensor> swiglu_quantize(const torch::Tensor& gate_up, const torch::Tensor& hi,
                                           const torch::Tensor& lo, int64_t log2e) {
  check(gate_up, torch::kInt64, "gate_up");
  const Exp2Tables tables = exp2_tables(hi, lo, log2e);
  const int64_t width = gate_up.size(-1);
  TORCH_CHECK(width % 2 == 0, "gate_up must have an even width");
  const int64_t f = width / 2, rows = gate_up.numel() / width;
  auto q = torch::empty(with_last(gate_up, f), gate_up.options().dtype(torch::kInt16));
  auto mant = torch::empty(with_last(gate_up, 1), gate_up.options());
  auto exp = torch::empty(with_last(gate_up, 1), gate_up.options());
  const int64_t* src = gate_up.data_ptr<int64_t>();
  int16_t* qp = q.data_ptr<int16_t>();
  int64_t* mp = mant.data_ptr<int64_t>();
  int64_t* ep = exp.data_ptr<int64_t>();
  constexpr int64_t up_limit = int64_t{1} << 31;
  // act[i - i0] for the values i0..i1-1 of row r.
  auto activate = [&](int64_t r, int64_t i0, int64_t i1, int64_t* act) {
    const int64_t* gate = src + r * width;
    const int64_t* up = gate + f;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t a = shift_round_const(silu(gate[i], tables) * clamp(up[i], -up_limit, up_limit), ACT_FRAC);
      act[i - i0] = clamp(a, -ACT_LIMIT, ACT_LIMIT);
    }
  };
  if (rows < at::get_num_threads()) {
    // Fewer rows than threads (decode): each row's activations split across the threads, then
    // quantized whole (silu is the costly part: ~10 ns a value, ~60 us per row of 5632).
    std::vector<int64_t> act(f);
    for (int64_t r = 0; r < rows; ++r) {
      at::parallel_for(0, f, 1024, [&](int64_t i0, int64_t i1) { activate(r, i0, i1, act.data() + i0); });
      quantize_row(act.data(), f, ACT_FRAC, qp + r * f, mp + r, ep + r);
    }
    return {q, mant, exp};
  }
  at::parallel_for(0, rows, grain(f, 4096), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> act(f);
    for (int64_t r = begin; r < end; ++r) {
      activate(r, 0, f, act.data());
      quantize_row(act.data(), f, ACT_FRAC, qp + r * f, mp + r, ep + r);
    }
  });
  return {q, mant, exp};
}

// floor(a / d) per element for 0 < d < 2**52 and |a| < 2**52, by floor_div_fast (for the tests).
torch::Tensor floor_divide_fast(const torch::Tensor& a, int64_t d) {
  check(a, torch::kInt64, "a");
  TORCH_CHECK(d > 0 && d < FAST_DIV_LIMIT, "d must lie in (0, 2**52)");
  auto out = torch::empty_like(a);
  const int64_t* ap = a.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  const double inv = 1.0 / static_cast<double>(d);
  for (int64_t i = 0; i < a.numel(); ++i) {
    TORCH_CHECK(ap[i] > -FAST_DIV_LIMIT && ap[i] < FAST_DIV_LIMIT, "|a| must be below 2**52");
    op[i] = floor_div_fast(ap[i], d, inv);
  }
  return out;
}

// Forces route `name` for this process (VERINFER_ISA); refuses one this CPU cannot run.
void set_isa(const std::string& name) {
  for (int level = ISA_SCALAR; level < ISA_COUNT; ++level) {
    if (name != ISA_NAMES[level]) continue;
    TORCH_CHECK(level <= cpu_isa, "this CPU cannot run the ", name, " route (its best is ", ISA_NAMES[cpu_isa], ")");
    isa = static_cast<Isa>(level);
    return;
  }
  std::string known;
  for (int level = ISA_SCALAR; level < ISA_COUNT; ++level) known += std::string(level ? ", " : "") + ISA_NAMES[level];
  TORCH_CHECK(false, "unknown route ", name, ": expected one of ", known);
}

// The route in use and the best this CPU can run.
std::map<std::string, std::string> isa_info() { return {{"active", ISA_NAMES[isa]}, {"cpu", ISA_NAMES[cpu_isa]}}; }

std::map<std::string, int64_t> constants() {
  return {{"ACT_FRAC", ACT_FRAC},   {"MANT_BITS", MANT_BITS}, {"ACT_LIMIT", ACT_LIMIT},
          {"PROB_FRAC", PROB_FRAC}, {"EXP_FRAC", EXP_FRAC},   {"_LOG2E_FRAC", LOG2E_FRAC},
          {"ROPE_FRAC", ROPE_FRAC}, {"QK_FRAC", QK_FRAC},     {"QK_LIMIT", QK_LIMIT},
          {"V_LIMIT", V_LIMIT},     {"_NORM_BITS", NORM_BITS}, {"_EPS_SHIFT", EPS_SHIFT},
          {"INT8_LEVELS", INT8_LEVELS}, {"WIDE_LEVELS", WIDE_LEVELS}, {"WIDE_SCALE_SHIFT", WIDE_SCALE_SHIFT}};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm_quantize", &rms_norm_quantize);
  m.def("int8_matmul", &int8_matmul, py::arg("x"), py::arg("w"));
  m.def("linear", &linear, py::arg("x"), py::arg("xm"), py::arg("xe"), py::arg("weight_t"), py::arg("mant"),
        py::arg("shift_base"), py::arg("bias"), py::arg("residual"));
  m.def("rope_to_cache", &rope_to_cache);
  m.def("attend", &attend, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("positions"),
        py::arg("rows"), py::arg("inv_sqrt_mant"), py::arg("inv_sqrt_exp"), py::arg("hi"), py::arg("lo"),
        py::arg("log2e"));
  m.def("swiglu_quantize", &swiglu_quantize);
  m.def("floor_divide_fast", &floor_divide_fast);
  m.def("constants", &constants);
  m.def("set_isa", &set_isa);
  m.def("isa_info", &isa_info);
}
