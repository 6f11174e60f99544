// The fused kernels for AVX-512F: 16 probes per register, fused multiply-adds.  Chosen at run time
// (fused.cpp) when the CPU has AVX-512F; the build flags stay x86-64-v2.  Compiled on x86-64 only.
//
// As in fused_avx2.cpp, the headers come first so that only this file's kernels (all in an
// anonymous namespace) are compiled for AVX-512.
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
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's avx512fintrin.h starts some intrinsics from _mm512_undefined_ps(), which it then warns
// may be used uninitialized (a false positive of its own headers).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "fused_kernels.h"

namespace retrain {
namespace {

#include "transpose_avx.h"

struct VecAvx512 {
    static constexpr int W = 16;
    static constexpr int kAccumulators = 24;  // 32 vector registers: 24 accumulators and their operands
    using reg = __m512;
    static reg load(const float* p) { return _mm512_load_ps(p); }
    static void store(float* p, reg x) { _mm512_store_ps(p, x); }
    static reg set1(float x) { return _mm512_set1_ps(x); }
    static reg zero() { return _mm512_setzero_ps(); }
    static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
    static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
    static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
    static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
    static reg sqrt(reg a) { return _mm512_sqrt_ps(a); }
    static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
    // maxps returns its second operand when either is NaN: NaN stays NaN, like torch.relu.
    static reg relu(reg x) { return _mm512_max_ps(_mm512_setzero_ps(), x); }
    static reg where_positive(reg g, reg y) {
        return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ), g);
    }
    static void add_to_double(double* acc, reg x) {
        const __m256 low = _mm512_castps512_ps256(x);
        const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
        _mm512_store_pd(acc, _mm512_add_pd(_mm512_load_pd(acc), _mm512_cvtps_pd(low)));
        _mm512_store_pd(acc + 8, _mm512_add_pd(_mm512_load_pd(acc + 8), _mm512_cvtps_pd(high)));
    }
    static reg blend(const int32_t* live, reg a, reg b) {
        const __m512i mask = _mm512_load_si512(live);
        return _mm512_mask_blend_ps(_mm512_test_epi32_mask(mask, mask), b, a);
    }
    static void transpose_block(const float* src, ptrdiff_t src_stride, float* dst, ptrdiff_t dst_stride) {
        for (int i = 0; i < 16; i += 8)  // four 8 x 8 blocks
            for (int j = 0; j < 16; j += 8)
                transpose8x8(src + i * src_stride + j, src_stride, dst + j * dst_stride + i, dst_stride);
    }
    static constexpr int kRowColumns = 8;
    static void transpose_rows(const float* const* rows, ptrdiff_t col, float* dst) {  // lanes 0-7, then 8-15
        transpose8x8_rows(rows, col, dst, 16);
        transpose8x8_rows(rows + 8, col, dst + 8, 16);
    }
};

}  // namespace

void train_epochs_avx512(const TrainArgs& args) { run_training<VecAvx512>(args); }

void validation_loss_avx512(const ValidationArgs& args) { run_validation<VecAvx512>(args); }

}  // namespace retrain

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // x86-64
