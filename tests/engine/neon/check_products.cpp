// Exactness check of the NEON product routes (src/verinfer/engine/csrc/products_neon.h) against
// plain int32 loops, on random int8 values and on the extremes (every byte -128 or 127), for row
// counts and lengths around the tile and step sizes. Built and run under qemu-aarch64 (or natively
// on aarch64) by tests/engine/test_neon_products.py. Prints one line per route and exits 0 when
// every product matched, 1 otherwise.
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "../../../src/verinfer/engine/csrc/products_neon.h"

using Products = void (*)(const int8_t*, const int8_t*, int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t);

// acc[r * n + c] = x[r] . w[c], the reference.
static void reference(const std::vector<int8_t>& x, const std::vector<int8_t>& w, int64_t rows, int64_t k,
                      int64_t n, std::vector<int32_t>& acc) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; ++c) {
      int32_t sum = 0;
      for (int64_t i = 0; i < k; ++i) sum += static_cast<int32_t>(x[r * k + i]) * w[c * k + i];
      acc[r * n + c] = sum;
    }
}

// Compares route `products` with the reference on one shape for several fills; returns mismatches.
static int64_t check_shape(Products products, int64_t rows, int64_t k, int64_t n, std::mt19937& gen) {
  std::uniform_int_distribution<int> byte(-128, 127);
  std::vector<int8_t> x(rows * k), w(n * k);
  std::vector<int32_t> want(rows * n), got(rows * n + 7);
  int64_t bad = 0;
  for (int fill = 0; fill < 4; ++fill) {
    for (auto& v : x) v = static_cast<int8_t>(fill == 0 ? byte(gen) : fill == 1 ? -128 : fill == 2 ? 127 : -128);
    for (auto& v : w) v = static_cast<int8_t>(fill == 0 ? byte(gen) : fill == 1 ? -128 : fill == 2 ? -128 : 127);
    if (fill == 0) {  // the extremes among random values too
      x[0] = -128;
      w[0] = -128;
    }
    reference(x, w, rows, k, n, want);
    // Columns in two calls (as parallel tasks take them), the second writing from column `half`.
    const int64_t half = n / 2;
    std::fill(got.begin(), got.end(), 0x5a5a5a5a);
    products(x.data(), w.data(), got.data(), n, rows, k, 0, half);
    products(x.data(), w.data(), got.data() + half, n, rows, k, half, n);
    for (int64_t i = 0; i < rows * n; ++i) bad += got[i] != want[i];
    for (int64_t i = rows * n; i < rows * n + 7; ++i) bad += got[i] != 0x5a5a5a5a;  // nothing past the end
  }
  return bad;
}

static bool check_route(const char* name, Products products) {
  std::mt19937 gen(1234);
  int64_t shapes = 0, bad = 0;
  for (int64_t rows : {1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 40})
    for (int64_t k : {1, 15, 16, 31, 32, 33, 64, 100, 2048})
      for (int64_t n : {1, 3, 33, 70}) {
        bad += check_shape(products, rows, k, n, gen);
        ++shapes;
      }
  // The largest sums the engine's int32 products hold: k = 8192 bytes of -128 * -128.
  bad += check_shape(products, 9, 8192, 5, gen);
  std::printf("%s: %lld shapes, %lld mismatches\n", name, static_cast<long long>(shapes + 1), static_cast<long long>(bad));
  return bad == 0;
}

int main() {
#if defined(__aarch64__)
  bool ok = check_route("neon", verinfer_neon::products_mull);
  if (verinfer_neon::has_dotprod()) {
    ok &= check_route("neon-dotprod", verinfer_neon::products_sdot);
  } else {
    std::printf("neon-dotprod: not run, this CPU has no dot product instructions\n");
  }
  return ok ? 0 : 1;
#else
  std::printf("not an aarch64 build\n");
  return 2;
#endif
}
