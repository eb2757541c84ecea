// Exact int8 weight products with Arm NEON (aarch64), the `neon` and `neon-dotprod` routes of
// int_kernels.cpp. No torch here, so tests/engine/neon/ compiles the same code into a standalone
// check that runs under qemu on any machine.
//
// Both are exact for every int8 input, with no bound on the values: `neon` multiplies 8 bytes at a
// time into int16 (vmull_s8: |x w| <= 128 * 128 = 2**14, which int16 holds) and adds pairs of
// those into int32 lanes (vpadalq_s16); `neon-dotprod` adds 4-byte dot products into int32
// lanes (vdotq_s32, SDOT). Every int32 lane holds a part of the true sum, which the engine keeps
// within int32 (as on every route).
#pragma once

#if defined(__aarch64__)
#include <arm_neon.h>

#include <algorithm>
#include <cstdint>

#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)  // Linux's bit for SDOT/UDOT (asm/hwcap.h)
#endif
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace verinfer_neon {

// Whether this CPU has the dot-product instructions.
inline bool has_dotprod() {
#if defined(__ARM_FEATURE_DOTPROD)
  return true;
#elif defined(__linux__)
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
  int value = 0;
  size_t size = sizeof(value);
  return sysctlbyname("hw.optional.arm.FEAT_DotProd", &value, &size, nullptr, 0) == 0 && value != 0;
#else
  return false;
#endif
}

// How far ahead of its reads the first row tile of a weight column prefetches it (as the AVX2
// route; not tuned on Arm hardware).
constexpr int64_t PREFETCH_BYTES = 4096;
// Rows per tile and columns per block, as the AVX2 route: each weight load serves every row of
// the tile; with more rows, a block of columns stays in cache while the row tiles pass over it.
constexpr int64_t TILE_ROWS = 8;
constexpr int64_t BLOCK_COLUMNS = 32;

// x . wc for the remaining bytes [i, k) of one row.
inline int32_t tail_dot(const int8_t* x, const int8_t* wc, int64_t i, int64_t k) {
  int32_t total = 0;
  for (; i < k; ++i) total += static_cast<int32_t>(x[i]) * wc[i];
  return total;
}

// acc[r * stride + c - c0] = x[r] . w[c] for int8 rows x (rows, k) and columns c0..c1-1 of a
// row-major int8 weight w (n, k), by Kernel::rows<ROWS, PREFETCH>(x, wc, k, out, stride), which
// computes one column for ROWS rows: tiles of up to TILE_ROWS rows, the first of which prefetches
// the column, over blocks of BLOCK_COLUMNS columns.
template <typename Kernel>
inline __attribute__((always_inline)) void products_body(const int8_t* x, const int8_t* w, int32_t* acc,
                                                         int64_t stride, int64_t rows, int64_t k, int64_t c0,
                                                         int64_t c1) {
  static_assert(TILE_ROWS == 8, "one case per row count below");
  for (int64_t b0 = c0; b0 < c1; b0 += BLOCK_COLUMNS) {
    const int64_t b1 = std::min(b0 + BLOCK_COLUMNS, c1);
    for (int64_t r = 0; r < rows; r += TILE_ROWS) {
      const int8_t* xr = x + r * k;
      for (int64_t c = b0; c < b1; ++c) {
        const int8_t* wc = w + c * k;
        int32_t* out = acc + r * stride + (c - c0);
        if (r > 0) {  // the column is in cache: the first tile fetched it
          switch (std::min(TILE_ROWS, rows - r)) {
            case 1: Kernel::template rows<1, false>(xr, wc, k, out, stride); break;
            case 2: Kernel::template rows<2, false>(xr, wc, k, out, stride); break;
            case 3: Kernel::template rows<3, false>(xr, wc, k, out, stride); break;
            case 4: Kernel::template rows<4, false>(xr, wc, k, out, stride); break;
            case 5: Kernel::template rows<5, false>(xr, wc, k, out, stride); break;
            case 6: Kernel::template rows<6, false>(xr, wc, k, out, stride); break;
            case 7: Kernel::template rows<7, false>(xr, wc, k, out, stride); break;
            default: Kernel::template rows<8, false>(xr, wc, k, out, stride); break;
          }
          continue;
        }
        switch (std::min(TILE_ROWS, rows)) {
          case 1: Kernel::template rows<1, true>(xr, wc, k, out, stride); break;
          case 2: Kernel::template rows<2, true>(xr, wc, k, out, stride); break;
          case 3: Kernel::template rows<3, true>(xr, wc, k, out, stride); break;
          case 4: Kernel::template rows<4, true>(xr, wc, k, out, stride); break;
          case 5: Kernel::template rows<5, true>(xr, wc, k, out, stride); break;
          case 6: Kernel::template rows<6, true>(xr, wc, k, out, stride); break;
          case 7: Kernel::template rows<7, true>(xr, wc, k, out, stride); break;
          default: Kernel::template rows<8, true>(xr, wc, k, out, stride); break;
        }
      }
    }
  }
}

// vmull/vpadal (any ARMv8-A): out[r * stride] = x[r] . wc for ROWS rows of k bytes and one weight
// column wc (k contiguous bytes), 16 bytes per step, two sums per row (one per half of a 32-byte
// step) to shorten the chains of dependent adds.
struct Mull {
  template <int ROWS, bool PREFETCH>
  static inline void rows(const int8_t* x, const int8_t* wc, int64_t k, int32_t* out, int64_t stride) {
    int32x4_t even[ROWS], odd[ROWS];
    for (int r = 0; r < ROWS; ++r) even[r] = odd[r] = vdupq_n_s32(0);
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
      if constexpr (PREFETCH) __builtin_prefetch(wc + i + PREFETCH_BYTES);
      const int8x16_t w0 = vld1q_s8(wc + i), w1 = vld1q_s8(wc + i + 16);
      for (int r = 0; r < ROWS; ++r) {
        const int8x16_t x0 = vld1q_s8(x + r * k + i), x1 = vld1q_s8(x + r * k + i + 16);
        even[r] = vpadalq_s16(even[r], vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
        even[r] = vpadalq_s16(even[r], vmull_high_s8(w0, x0));
        odd[r] = vpadalq_s16(odd[r], vmull_s8(vget_low_s8(w1), vget_low_s8(x1)));
        odd[r] = vpadalq_s16(odd[r], vmull_high_s8(w1, x1));
      }
    }
    for (int r = 0; r < ROWS; ++r)
      out[r * stride] = vaddvq_s32(vaddq_s32(even[r], odd[r])) + tail_dot(x + r * k, wc, i, k);
  }
};

inline void products_mull(const int8_t* x, const int8_t* w, int32_t* acc, int64_t stride, int64_t rows,
                          int64_t k, int64_t c0, int64_t c1) {
  products_body<Mull>(x, w, acc, stride, rows, k, c0, c1);
}

// The dot-product route is compiled for ARMv8.2-A with SDOT whatever the build's target; it runs
// only where has_dotprod() says the CPU has it. (The other code stays on the build's target, so
// the compiler cannot put SDOT in it.)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("dotprod"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#endif

// The same as Mull::rows with SDOT, 4-byte dot products per int32 lane.
struct Sdot {
  template <int ROWS, bool PREFETCH>
  static inline void rows(const int8_t* x, const int8_t* wc, int64_t k, int32_t* out, int64_t stride) {
    int32x4_t even[ROWS], odd[ROWS];
    for (int r = 0; r < ROWS; ++r) even[r] = odd[r] = vdupq_n_s32(0);
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
      if constexpr (PREFETCH) __builtin_prefetch(wc + i + PREFETCH_BYTES);
      const int8x16_t w0 = vld1q_s8(wc + i), w1 = vld1q_s8(wc + i + 16);
      for (int r = 0; r < ROWS; ++r) {
        even[r] = vdotq_s32(even[r], w0, vld1q_s8(x + r * k + i));
        odd[r] = vdotq_s32(odd[r], w1, vld1q_s8(x + r * k + i + 16));
      }
    }
    for (int r = 0; r < ROWS; ++r)
      out[r * stride] = vaddvq_s32(vaddq_s32(even[r], odd[r])) + tail_dot(x + r * k, wc, i, k);
  }
};

inline void products_sdot(const int8_t* x, const int8_t* w, int32_t* acc, int64_t stride, int64_t rows,
                          int64_t k, int64_t c0, int64_t c1) {
  products_body<Sdot>(x, w, acc, stride, rows, k, c0, c1);
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

}  // namespace verinfer_neon

#endif  // __aarch64__
