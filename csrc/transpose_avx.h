// 8 x 8 float transposes in AVX registers, for the AVX2 and AVX-512 kernels only: include it
// after their `#pragma GCC target` and inside their anonymous namespace (see fused_avx2.cpp).
#pragma once

// r[i] = row i of an 8 x 8 block -> dst[j * dst_stride + i] = r[i][j] (unaligned).
inline void transpose8x8_store(__m256* r, float* dst, ptrdiff_t dst_stride) {
    __m256 t[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for i, j < 8 (unaligned).
inline void transpose8x8(const float* src, ptrdiff_t src_stride, float* dst, ptrdiff_t dst_stride) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
    transpose8x8_store(r, dst, dst_stride);
}

// dst[j * dst_stride + i] = rows[i][col + j] for i, j < 8 (unaligned): eight item rows into lanes.
inline void transpose8x8_rows(const float* const* rows, ptrdiff_t col, float* dst, ptrdiff_t dst_stride) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows[i] + col);
    transpose8x8_store(r, dst, dst_stride);
}
