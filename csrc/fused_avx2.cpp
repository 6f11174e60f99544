// The fused kernels for AVX2 + FMA: 8 probes per register, fused multiply-adds.  Chosen at run
// time (fused.cpp) when the CPU has both; the build flags stay x86-64-v2.  Compiled on x86-64 only.
//
// The headers come first so that only this file's kernels (all in an anonymous namespace) are
// compiled for AVX2: an inline function shared with other files must never be, or the linker
// could hand the AVX2 copy to the SSE4 path.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <omp.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "contract.h"
#include "fused.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include "fused_kernels.h"

namespace retrain {
namespace {

#include "transpose_avx.h"

struct VecAvx2 {
    static constexpr int W = 8;
    static constexpr int kAccumulators = 12;  // of 16 registers
    using reg = __m256;
    static reg load(const float* p) { return _mm256_load_ps(p); }
    static void store(float* p, reg x) { _mm256_store_ps(p, x); }
    static reg set1(float x) { return _mm256_set1_ps(x); }
    static reg zero() { return _mm256_setzero_ps(); }
    static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
    static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
    static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
    static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
    static reg sqrt(reg a) { return _mm256_sqrt_ps(a); }
    static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
    // maxps returns its second operand when either is NaN: NaN stays NaN, like torch.relu.
    static reg relu(reg x) { return _mm256_max_ps(_mm256_setzero_ps(), x); }
    static reg where_positive(reg g, reg y) {
        return _mm256_and_ps(g, _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ));
    }
    static void add_to_double(double* acc, reg x) {
        _mm256_store_pd(acc, _mm256_add_pd(_mm256_load_pd(acc), _mm256_cvtps_pd(_mm256_castps256_ps128(x))));
        _mm256_store_pd(acc + 4, _mm256_add_pd(_mm256_load_pd(acc + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1))));
    }
    static reg blend(const int32_t* live, reg a, reg b) {  // blendv takes a where the mask's sign bit is set
        return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(live))));
    }
    static void transpose_block(const float* src, ptrdiff_t src_stride, float* dst, ptrdiff_t dst_stride) {
        transpose8x8(src, src_stride, dst, dst_stride);
    }
    static constexpr int kRowColumns = 8;
    static void transpose_rows(const float* const* rows, ptrdiff_t col, float* dst) {
        transpose8x8_rows(rows, col, dst, 8);
    }
};

}  // namespace

void train_epochs_avx2(const TrainArgs& args) { run_training<VecAvx2>(args); }

void validation_loss_avx2(const ValidationArgs& args) { run_validation<VecAvx2>(args); }

}  // namespace retrain

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // x86-64
