// The fused kernels for x86-64-v2 (SSE4.2): 4 probes per register, multiply and add separately.
// Compiled on x86-64 only.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "fused_kernels.h"

namespace retrain {
namespace {

struct VecSse4 {
    static constexpr int W = 4;
    static constexpr int kAccumulators = 12;  // of 16 registers
    using reg = __m128;
    static reg load(const float* p) { return _mm_load_ps(p); }
    static void store(float* p, reg x) { _mm_store_ps(p, x); }
    static reg set1(float x) { return _mm_set1_ps(x); }
    static reg zero() { return _mm_setzero_ps(); }
    static reg add(reg a, reg b) { return _mm_add_ps(a, b); }
    static reg sub(reg a, reg b) { return _mm_sub_ps(a, b); }
    static reg mul(reg a, reg b) { return _mm_mul_ps(a, b); }
    static reg div(reg a, reg b) { return _mm_div_ps(a, b); }
    static reg sqrt(reg a) { return _mm_sqrt_ps(a); }
    static reg fmadd(reg a, reg b, reg c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
    // maxps returns its second operand when either is NaN: NaN stays NaN, like torch.relu.
    static reg relu(reg x) { return _mm_max_ps(_mm_setzero_ps(), x); }
    static reg where_positive(reg g, reg y) { return _mm_and_ps(g, _mm_cmpgt_ps(y, _mm_setzero_ps())); }
    static void add_to_double(double* acc, reg x) {
        _mm_store_pd(acc, _mm_add_pd(_mm_load_pd(acc), _mm_cvtps_pd(x)));
        _mm_store_pd(acc + 2, _mm_add_pd(_mm_load_pd(acc + 2), _mm_cvtps_pd(_mm_movehl_ps(x, x))));
    }
    static reg blend(const int32_t* live, reg a, reg b) {  // blendv takes a where the mask's sign bit is set
        return _mm_blendv_ps(b, a, _mm_castsi128_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(live))));
    }
    static void transpose_block(const float* src, ptrdiff_t src_stride, float* dst, ptrdiff_t dst_stride) {
        __m128 r0 = _mm_loadu_ps(src), r1 = _mm_loadu_ps(src + src_stride);
        __m128 r2 = _mm_loadu_ps(src + 2 * src_stride), r3 = _mm_loadu_ps(src + 3 * src_stride);
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
        _mm_storeu_ps(dst, r0);
        _mm_storeu_ps(dst + dst_stride, r1);
        _mm_storeu_ps(dst + 2 * dst_stride, r2);
        _mm_storeu_ps(dst + 3 * dst_stride, r3);
    }
    static constexpr int kRowColumns = 4;
    static void transpose_rows(const float* const* rows, ptrdiff_t col, float* dst) {
        __m128 r0 = _mm_loadu_ps(rows[0] + col), r1 = _mm_loadu_ps(rows[1] + col);
        __m128 r2 = _mm_loadu_ps(rows[2] + col), r3 = _mm_loadu_ps(rows[3] + col);
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
        _mm_store_ps(dst, r0);
        _mm_store_ps(dst + 4, r1);
        _mm_store_ps(dst + 8, r2);
        _mm_store_ps(dst + 12, r3);
    }
};

}  // namespace

void train_epochs_sse4(const TrainArgs& args) { run_training<VecSse4>(args); }

void validation_loss_sse4(const ValidationArgs& args) { run_validation<VecSse4>(args); }

}  // namespace retrain
#endif  // x86-64
