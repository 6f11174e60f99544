// The training contract's integer arithmetic (retrain/contract.py states it; this is the same
// function, word for word): hashing, initial embeddings, per-user permutations, Adam step count.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace retrain {

constexpr uint32_t kGolden = 0x9E3779B9u;
constexpr uint32_t kInitDomain = 0x1D2E3F40u;
constexpr uint32_t kPermDomain = 0x5A17C0DEu;
constexpr int kPermRounds = 4;

// MurmurHash3's 32-bit finalizer.
inline uint32_t fmix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return x;
}

// Folds one more word into a hash (all arithmetic mod 2**32).
inline uint32_t combine(uint32_t h, uint32_t v) { return fmix32(h ^ (v + kGolden)); }

// Dimension j of the initial embedding of the user with key `key`: uniform on [-scale, scale).
// (h >> 8) * 2**-24 is exact in float, and so is 2u - 1; only the final product rounds.
inline float initial_value(uint32_t seed, uint32_t key, uint32_t j, float scale) {
    const uint32_t h = combine(combine(combine(kInitDomain, seed), key), j);
    const float u = static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
    return (2.0f * u - 1.0f) * scale;
}

// The visiting order of a user's n training ratings in one epoch: a 4-round bijection of
// [0, 2**bits) restricted to [0, n) by cycle walking.
class Permutation {
public:
    Permutation(uint32_t seed, uint32_t epoch, uint32_t key, uint32_t n) : n_(n) {
        // bits = bit length of n - 1 (0 for n <= 1, when the order is trivially 0).
        int bits = 0;
        for (uint32_t x = n > 0 ? n - 1 : 0; x != 0; x >>= 1) ++bits;
        mask_ = static_cast<uint32_t>((uint64_t{1} << bits) - 1);
        shift_ = static_cast<uint32_t>((bits + 1) / 2);
        const uint32_t base = combine(combine(combine(kPermDomain, seed), epoch), key);
        for (int r = 0; r < kPermRounds; ++r) {
            mult_[r] = combine(base, static_cast<uint32_t>(2 * r)) | 1u;
            add_[r] = combine(base, static_cast<uint32_t>(2 * r + 1));
        }
    }

    // Fills order[0..n) with the rating index visited at each position.
    void fill(uint32_t* order) const {
        if (n_ <= 1) {
            if (n_ == 1) order[0] = 0;
            return;
        }
        for (uint32_t i = 0; i < n_; ++i) {
            uint32_t x = bijection(i);
            while (x >= n_) x = bijection(x);  // ends: the bijection's cycle through i re-enters [0, n)
            order[i] = x;
        }
    }

    // The bijection's constants, for the kernels' vectorised fill (fused_kernels.h): the same
    // rounds on several positions at once.
    uint32_t n() const { return n_; }
    uint32_t mask() const { return mask_; }
    uint32_t shift() const { return shift_; }
    uint32_t mult(int r) const { return mult_[r]; }
    uint32_t add(int r) const { return add_[r]; }

private:
    uint32_t bijection(uint32_t x) const {
        for (int r = 0; r < kPermRounds; ++r) {
            x = (x * mult_[r] + add_[r]) & mask_;
            x ^= x >> shift_;
        }
        return x;
    }

    uint32_t n_, mask_, shift_;
    uint32_t mult_[kPermRounds], add_[kPermRounds];
};

// Exact sums (retrain.contract.fixed_point_limbs): a value truncated to a multiple of 2**-64 and
// cut into six 32-bit limbs, value = sum_k limb[k] * 2**(32 k - 64).  Integer sums of limbs do not
// depend on the order of the terms.  Returns false (adding nothing) for NaN, inf or |v| >= 2**127.
constexpr int kFixedLimbs = 6;

inline bool add_fixed(double v, int64_t* limbs) {
    if (!(std::fabs(v) < 0x1p127)) return false;  // also false for NaN
    // Products with powers of two are exact (no overflow or underflow in this range).
    double x = std::floor(v * 0x1p64);
    for (int k = 0; k < kFixedLimbs - 1; ++k) {
        const double high = std::floor(x * 0x1p-32);
        limbs[k] += static_cast<int64_t>(x - high * 0x1p32);  // in [0, 2**32): every step is exact
        x = high;
    }
    limbs[kFixedLimbs - 1] += static_cast<int64_t>(x);
    return true;
}

// The same exact sum, fast for what validation sums are (0 <= v < 2**63): those go into one
// 128-bit integer of units 2**-64 straight from the bits of the double; anything else takes
// add_fixed.  add_to() writes the total as limbs (they need not be normalised to be summed).
class FixedSum {
public:
    bool add(double v) {
        if (!(v >= 0.0 && v < 0x1p63)) return add_fixed(v, big_);  // NaN, negatives, huge values
        uint64_t bits;
        std::memcpy(&bits, &v, sizeof(bits));
        const int exponent = static_cast<int>(bits >> 52);  // the sign bit is 0
        if (exponent == 0) return true;                      // below 2**-1022: truncates to 0
        const unsigned __int128 mantissa = (bits & ((uint64_t{1} << 52) - 1)) | (uint64_t{1} << 52);
        const int shift = exponent - 1075 + 64;  // v * 2**64 = mantissa * 2**shift
        // Each term is below 2**127 units, but their sum can pass 2**128 (three values near 2**63,
        // or a thousand near 2**54): a carry out of the 128 bits is 2**128 units, one unit of limb 4.
        const unsigned __int128 term = shift >= 0 ? mantissa << shift : shift > -64 ? mantissa >> -shift : 0;
        small_ += term;   // floor(v * 2**64) (truncation toward zero = floor for v >= 0)
        if (small_ < term) ++big_[4];
        return true;
    }

    void add_to(int64_t* limbs) const {
        for (int k = 0; k < 4; ++k) limbs[k] += static_cast<int64_t>((small_ >> (32 * k)) & 0xFFFFFFFFu);
        for (int k = 0; k < kFixedLimbs; ++k) limbs[k] += big_[k];
    }

private:
    unsigned __int128 small_ = 0;  // the fast path's sum mod 2**128, in units of 2**-64
    int64_t big_[kFixedLimbs] = {};  // add_fixed's limbs, and small_'s carries (2**128 units) in big_[4]
};

// 1-based Adam step count of a user's chunk-th step (0-based) in `epoch` (bias correction).
inline int64_t adam_step(int64_t epoch, int64_t n, int64_t batch_size, int64_t chunk) {
    return epoch * ((n + batch_size - 1) / batch_size) + chunk + 1;
}

}  // namespace retrain
