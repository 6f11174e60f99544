// The fused training and validation kernels, written once over a SIMD vector type V and
// instantiated per instruction set by fused_portable.cpp, fused_sse4.cpp, fused_avx2.cpp and
// fused_avx512.cpp.
//
// V provides: W (floats per register), kAccumulators (micro-kernel accumulator registers: enough
// independent chains to hide the multiply-add latency, fitting the register file with the
// operands), reg, load/store (aligned), set1, zero, add, sub, mul, div,
// sqrt, fmadd(a, b, c) = a*b + c, relu(x), where_positive(g, y) = (y > 0 ? g : 0),
// add_to_double(double* acc, x) (acc[0..W) += x), blend(live, a, b) (lane l = live[l] ? a : b,
// live 64-byte aligned int32 of -1 or 0), transpose_block(src, src_stride, dst, dst_stride) (a
// W x W block, dst[j][i] = src[i][j], unaligned), and kRowColumns with
// transpose_rows(rows, col, dst) (dst[c * W + l] = rows[l][col + c] for c < kRowColumns, l < W:
// one column block of W item rows, one row per lane; rows unaligned, dst aligned).
//
// SIMD lanes are probes: one user's state is held transposed, [d][lanes] with lanes = P rounded
// up to W (padding lanes have lr = reg = 0), so every probe runs the same instructions in its own
// lane.  A probe's result therefore depends neither on P, nor on the other probes (a diverging
// probe cannot disturb them), nor on the thread count (one thread owns a user for the whole call).
//
// Users in lanes: when the probes fill at most half a register (P <= W / 2), G = W / P users
// (consecutive in the heaviest-first order, any rating counts) share one register, lane g * P + p
// holding probe p of user g.  Each lane runs the per-lane operations it would run alone, in the
// same order: its own item rows (transposed into lanes instead of broadcast), its own minibatch size and Adam
// step count.  Where a lane's minibatch is shorter than the register's longest, its missing
// ratings add an exact zero (d loss / d pred masked to +0 times a finite item row); a lane whose
// user has finished its steps of the epoch keeps its state (the update is blended away).  The
// result is bitwise the per-user one.
//
// Everything is in an anonymous namespace: each instruction set gets its own copy, so the linker
// can never pick code compiled for AVX2 for the SSE4 path.
#pragma once

#include <omp.h>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <vector>

#include "contract.h"
#include "fused.h"

namespace retrain {
namespace {

constexpr int kTile = 64;  // ratings per tile: bounds the scratch; their Q rows stay in L1 between the products
// Micro-kernel: V::kAccumulators registers (rows x kBlockVectors vectors of lanes).
constexpr int kBlockVectors = 2;
constexpr int kPackedRatings = 4;  // users in lanes: ratings of every lane's minibatch handled together
// Users in lanes: ratings of every lane's minibatch staged at a time, in [rating][lane] order (a
// multiple of kPackedRatings).
constexpr int kStagedRatings = 32;
static_assert(kStagedRatings % kPackedRatings == 0, "a staged window holds whole packed blocks");
constexpr int kMaxGroup = 16;  // users in lanes: at most one per lane of a 16-float register

// --------------------------------------------------------------------------- state prefetch

// Lines of the next group's state asked for after each micro-kernel call and each row of the
// optimizer update (see StatePrefetch): on the 1M set at P = 64 (one step of 45 ratings a user,
// 384 lines) 32 and 8 ask for all of them within the step; 16 and 4 were 5% slower, 8 and 2 14%.
constexpr int kPrefetchPerBlock = 32;
constexpr int kPrefetchPerRow = 8;

// The state of the group a thread trains next (emb and moments of each of its users), asked into
// this core's caches a few lines at a time while the thread trains the current group.  At once,
// a user's 384 lines (P = 64, d = 32, Adam) overflow the core's miss queue and are mostly lost;
// spread through the arithmetic, they arrive behind it.
class StatePrefetch {
public:
    void start(const TrainArgs& a, const int64_t* users, int n_users) {
        n_ranges_ = range_ = 0;
        offset_ = 0;
        if (a.init != nullptr) return;  // a fresh call reads no state
        bytes_ = sizeof(float) * static_cast<size_t>(a.n_probes) * a.head.d;
        const float* arrays[3] = {a.emb, a.adam_m, a.adam_v};
        for (int g = 0; g < n_users; ++g)
            for (int k = 0; k < (a.optimizer.adam ? 3 : 1); ++k)
                at_[n_ranges_++] = reinterpret_cast<const char*>(arrays[k] + users[g] * a.n_probes * a.head.d);
    }
    void advance(int lines) {
        for (; lines > 0 && range_ < n_ranges_; --lines) {
            __builtin_prefetch(at_[range_] + offset_, 0, 2);
            offset_ += 64;
            if (offset_ >= bytes_) {
                offset_ = 0;
                ++range_;
            }
        }
    }

private:
    static constexpr int kMaxRanges = 3 * kMaxGroup;  // emb, m and v of each user of a group
    const char* at_[kMaxRanges];
    int n_ranges_ = 0, range_ = 0;
    size_t bytes_ = 0, offset_ = 0;
};

inline void prefetch_some(StatePrefetch* prefetch, int lines) {
    if (prefetch != nullptr) prefetch->advance(lines);
}

// --------------------------------------------------------------------------- small matrix products

// The left operand A(m, k) of a product, read in place (no copy).
struct Strided {  // A(m, k) = a[m * m_step + k * k_step]: a tower weight or its transpose
    const float* a;
    ptrdiff_t m_step, k_step;
    float operator()(int m, int k) const { return a[m * m_step + k * k_step]; }
};

struct ItemRows {  // A(m, k) = row[m][k]: the Q rows of a tile's ratings
    const float* const* row;
    float operator()(int m, int k) const { return row[m][k]; }
};

struct ItemColumns {  // A(m, k) = row[k][m]: their transpose
    const float* const* row;
    float operator()(int m, int k) const { return row[k][m]; }
};

// C[m, :] (+)= sum_k A(m0 + m, k) * B[k, :] for MR rows and NR vectors of lanes.
template <class V, int MR, int NR, bool ACCUMULATE, class A>
inline void micro_kernel(int m0, int K, const A& a, const float* B, ptrdiff_t ldb, float* C, ptrdiff_t ldc) {
    using R = typename V::reg;
    R acc[MR][NR];
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) acc[m][n] = ACCUMULATE ? V::load(C + m * ldc + n * V::W) : V::zero();
    for (int k = 0; k < K; ++k) {
        R b[NR];
        for (int n = 0; n < NR; ++n) b[n] = V::load(B + k * ldb + n * V::W);
        for (int m = 0; m < MR; ++m) {
            const R x = V::set1(a(m0 + m, k));
            for (int n = 0; n < NR; ++n) acc[m][n] = V::fmadd(x, b[n], acc[m][n]);
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) V::store(C + m * ldc + n * V::W, acc[m][n]);
}

// The last `rows` (< MR + 1) rows, with one micro-kernel of exactly that many rows.
template <class V, int MR, int NR, bool ACCUMULATE, class A>
inline void gemm_tail(int rows, int m0, int K, const A& a, const float* B, ptrdiff_t ldb, float* C, ptrdiff_t ldc) {
    if constexpr (MR > 0) {
        if (rows == MR)
            micro_kernel<V, MR, NR, ACCUMULATE>(m0, K, a, B, ldb, C, ldc);
        else
            gemm_tail<V, MR - 1, NR, ACCUMULATE>(rows, m0, K, a, B, ldb, C, ldc);
    }
}

template <class V, int NR, bool ACCUMULATE, class A>
inline void gemm_rows(int M, int K, const A& a, const float* B, ptrdiff_t ldb, float* C, ptrdiff_t ldc,
                      StatePrefetch* prefetch) {
    constexpr int MR = V::kAccumulators / NR;
    int m = 0;
    for (; m + MR <= M; m += MR) {
        micro_kernel<V, MR, NR, ACCUMULATE>(m, K, a, B, ldb, C + m * ldc, ldc);
        prefetch_some(prefetch, kPrefetchPerBlock);
    }
    gemm_tail<V, MR - 1, NR, ACCUMULATE>(M - m, m, K, a, B, ldb, C + m * ldc, ldc);
    prefetch_some(prefetch, kPrefetchPerBlock);
}

// C [M][lanes] (+)= A [M x K] * B [K][lanes]; lanes is a multiple of V::W.  Each lane of C sums
// its K terms in order k = 0, 1, ..., whatever the blocking.  `prefetch` (or null) advances after
// each micro-kernel call.
template <class V, bool ACCUMULATE, class A>
void gemm(int M, int K, int lanes, const A& a, const float* B, float* C, StatePrefetch* prefetch = nullptr) {
    constexpr int step = kBlockVectors * V::W;
    int n = 0;
    for (; n + step <= lanes; n += step)
        gemm_rows<V, kBlockVectors, ACCUMULATE>(M, K, a, B + n, lanes, C + n, lanes, prefetch);
    for (; n < lanes; n += V::W) gemm_rows<V, 1, ACCUMULATE>(M, K, a, B + n, lanes, C + n, lanes, prefetch);
}

// --------------------------------------------------------------------------- the frozen tower

// x [out][lanes] <- act(x + bias).
template <class V>
void bias_activation(float* x, const float* bias, int out, int lanes, int act) {
    for (int o = 0; o < out; ++o) {
        float* row = x + static_cast<ptrdiff_t>(o) * lanes;
        const typename V::reg c = V::set1(bias[o]);
        for (int v = 0; v < lanes; v += V::W) {
            typename V::reg y = V::add(V::load(row + v), c);
            if (act == kRelu) y = V::relu(y);
            V::store(row + v, y);
        }
        if (act == kTanh)
            for (int v = 0; v < lanes; ++v) row[v] = std::tanh(row[v]);
    }
}

// Features [h][lanes] of embeddings e [d][lanes]; layer outputs are kept in act[l] for backward.
template <class V>
const float* tower_forward(const TowerView& tower, const float* e, int lanes, float* const* act) {
    const float* x = e;
    for (int l = 0; l < tower.n_layers; ++l) {
        gemm<V, false>(tower.out[l], tower.in[l], lanes, Strided{tower.weight[l], tower.in[l], 1}, x, act[l]);
        bias_activation<V>(act[l], tower.bias[l], tower.out[l], lanes, tower.act[l]);
        x = act[l];
    }
    return x;
}

// Gradient w.r.t. the embeddings from the gradient g [h][lanes] w.r.t. the features.  g and spare
// are overwritten (ping-pong buffers of max width); returns the buffer holding [d][lanes].
template <class V>
float* tower_backward(const TowerView& tower, float* g, float* spare, int lanes, const float* const* act) {
    using R = typename V::reg;
    for (int l = tower.n_layers - 1; l >= 0; --l) {
        const float* y = act[l];
        const ptrdiff_t size = static_cast<ptrdiff_t>(tower.out[l]) * lanes;
        if (tower.act[l] == kRelu) {
            for (ptrdiff_t i = 0; i < size; i += V::W) V::store(g + i, V::where_positive(V::load(g + i), V::load(y + i)));
        } else if (tower.act[l] == kTanh) {
            const R one = V::set1(1.0f);
            for (ptrdiff_t i = 0; i < size; i += V::W) {
                const R t = V::load(y + i);
                V::store(g + i, V::mul(V::load(g + i), V::sub(one, V::mul(t, t))));
            }
        }
        // d/dx of W x: W^T g, i.e. A(m = input, k = output) = W[k * in + m].
        gemm<V, false>(tower.in[l], tower.out[l], lanes, Strided{tower.weight[l], 1, tower.in[l]}, g, spare);
        float* t = g;
        g = spare;
        spare = t;
    }
    return g;
}

// --------------------------------------------------------------------------- per-thread scratch

// One aligned block, carved into 64-byte aligned arrays.
class Scratch {
public:
    explicit Scratch(size_t bytes) : base_(static_cast<char*>(std::aligned_alloc(64, round(bytes)))) {
        if (base_ == nullptr) throw std::bad_alloc();
    }
    ~Scratch() { std::free(base_); }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    char* data() const { return base_; }
    static size_t round(size_t bytes) { return (bytes + 63) / 64 * 64; }

private:
    char* base_;
};

class Carver {
public:
    explicit Carver(char* base) : next_(base) {}
    template <class T>
    T* take(size_t n) {
        T* p = reinterpret_cast<T*>(next_);
        next_ += Scratch::round(n * sizeof(T));
        return p;
    }
    char* next() const { return next_; }

private:
    char* next_;
};

// What one thread needs for one user: the state, tower activations, gradients, one tile and the
// thread's share of the checkpoints' outputs.
struct UserBuffers {
    float *lr, *reg2, *e, *m, *v;
    float* act[kMaxLayers];
    float *g, *spare;             // feature / tower gradients (ping-pong)
    float *tile;                  // [kTile][lanes]: predictions, then d loss / d pred
    const float** rows;           // the tile's Q rows [kTile] (pointers into Q)
    float *offset, *rating, *coef;  // b + mu, r, w * scale [kTile]
    float* probe;                 // [lanes] sum of x * 0 over checked values: NaN where one was not finite
    double* loss;                 // [lanes] a user's validation sums
    FixedSum* sums;               // [checkpoints][lanes] exact validation sums of this thread's users
    uint8_t* bad;                 // [checkpoints][lanes] 1 where this thread saw a non-finite state or loss
    uint32_t* order;              // the epoch's permutations [group][order_stride]
    int64_t order_stride;         // max ratings of a user
    uint32_t* bijection;          // [2 order_stride] the bijection table of one permutation (fill_order)
    // The step of each lane's user: -1 where it takes one, 0 where it has finished its epoch, and
    // the Adam bias corrections of its step count.
    int32_t* live;                // [lanes]
    float *unbias1, *unbias2;     // [lanes]
    // Users in lanes only: kStagedRatings ratings of every lane's minibatch, and the item vectors
    // of kPackedRatings of them.
    float* item_block;            // [kPackedRatings][h][lanes] item vectors
    const float** lane_rows;      // [kStagedRatings][lanes] item rows (pointers into Q)
    float *lane_offset, *lane_rating, *lane_coef;  // [kStagedRatings][lanes] b + mu, r, w * scale
    int32_t* slot_live;           // [kStagedRatings][lanes] -1 where the lane's minibatch has that rating
    StatePrefetch* prefetch;      // the next group's state (training only; null elsewhere)

    // Carve the buffers from `base`; with base = nullptr only measures (returns the bytes).
    // `group`: users per register (1: probes only).
    static size_t layout(UserBuffers* b, char* base, const HeadView& head, int lanes, int64_t max_ratings,
                         int checkpoints, int group = 1) {
        Carver c(base);
        int width = head.d > head.h ? head.d : head.h;
        for (int l = 0; l < head.tower.n_layers; ++l) width = head.tower.out[l] > width ? head.tower.out[l] : width;
        const size_t state = static_cast<size_t>(head.d) * lanes;
        UserBuffers t;
        t.lr = c.take<float>(lanes);
        t.reg2 = c.take<float>(lanes);
        t.e = c.take<float>(state);
        t.m = c.take<float>(state);
        t.v = c.take<float>(state);
        for (int l = 0; l < kMaxLayers; ++l)
            t.act[l] = c.take<float>(l < head.tower.n_layers ? static_cast<size_t>(head.tower.out[l]) * lanes : 0);
        t.g = c.take<float>(static_cast<size_t>(width) * lanes);
        t.spare = c.take<float>(static_cast<size_t>(width) * lanes);
        t.tile = c.take<float>(static_cast<size_t>(kTile) * lanes);
        t.rows = c.take<const float*>(kTile);
        t.offset = c.take<float>(kTile);
        t.rating = c.take<float>(kTile);
        t.coef = c.take<float>(kTile);
        t.probe = c.take<float>(lanes);
        t.loss = c.take<double>(lanes);
        t.sums = c.take<FixedSum>(static_cast<size_t>(checkpoints) * lanes);
        t.bad = c.take<uint8_t>(static_cast<size_t>(checkpoints) * lanes);
        t.order = c.take<uint32_t>(static_cast<size_t>(max_ratings) * group);
        t.order_stride = max_ratings;
        t.bijection = c.take<uint32_t>(2 * static_cast<size_t>(max_ratings));
        t.live = c.take<int32_t>(lanes);
        t.unbias1 = c.take<float>(lanes);
        t.unbias2 = c.take<float>(lanes);
        const size_t staged = group > 1 ? static_cast<size_t>(lanes) * kStagedRatings : 0;
        t.item_block = c.take<float>(group > 1 ? static_cast<size_t>(head.h) * lanes * kPackedRatings : 0);
        t.lane_rows = c.take<const float*>(staged);
        t.lane_offset = c.take<float>(staged);
        t.lane_rating = c.take<float>(staged);
        t.lane_coef = c.take<float>(staged);
        t.slot_live = c.take<int32_t>(staged);
        t.prefetch = nullptr;
        if (b != nullptr) *b = t;
        return static_cast<size_t>(c.next() - base);
    }

    void clear_outputs(int checkpoints, int lanes) {
        for (size_t i = 0; i < static_cast<size_t>(checkpoints) * lanes; ++i) sums[i] = FixedSum();
        std::memset(bad, 0, static_cast<size_t>(checkpoints) * lanes);
    }
};

int padded_lanes(int n_probes, int width) { return (n_probes + width - 1) / width * width; }

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols: W x W blocks in
// registers, the edges one float at a time.
template <class V>
void transpose(const float* src, ptrdiff_t src_stride, float* dst, ptrdiff_t dst_stride, int rows, int cols) {
    constexpr int W = V::W;
    const int full_rows = rows / W * W, full_cols = cols / W * W;
    for (int i = 0; i < full_rows; i += W)
        for (int j = 0; j < full_cols; j += W)
            V::transpose_block(src + i * src_stride + j, src_stride, dst + j * dst_stride + i, dst_stride);
    for (int i = 0; i < rows; ++i)
        for (int j = i < full_rows ? full_cols : 0; j < cols; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
}

// state [P][d] (one user's slice of [U, P, d]) -> lanes [0, P) of buf [d][lanes] (the caller
// points buf at the user's first lane and zeroes the padding lanes).
template <class V>
void place_transposed(const float* state, float* buf, int P, int d, int lanes) {
    transpose<V>(state, d, buf, lanes, P, d);
}

// Lanes [0, P) of buf [d][lanes] <- init [d] (every probe starts from the user's init).
void place_broadcast(const float* init, float* buf, int P, int d, int lanes) {
    for (int i = 0; i < d; ++i)
        for (int p = 0; p < P; ++p) buf[static_cast<ptrdiff_t>(i) * lanes + p] = init[i];
}

// Lanes [0, P) of buf [d][lanes] -> state [P][d].
template <class V>
void store_transposed(const float* buf, float* state, int P, int d, int lanes) {
    transpose<V>(buf, lanes, state, d, d, P);
}

// One user's state, [P][d] or (probes_last) [d][P], -> lanes [0, P) of buf [d][lanes]: a transpose,
// or d row copies (the layout the kernels compute in, so nothing is shuffled).
template <class V>
void place_state(const float* state, bool probes_last, float* buf, int P, int d, int lanes) {
    if (!probes_last) return place_transposed<V>(state, buf, P, d, lanes);
    for (int i = 0; i < d; ++i)  // a loop, not memcpy: a call per row would cost more than P = 1's 4 bytes
        for (int p = 0; p < P; ++p) buf[static_cast<ptrdiff_t>(i) * lanes + p] = state[static_cast<ptrdiff_t>(i) * P + p];
}

// Lanes [0, P) of buf [d][lanes] -> one user's state, [P][d] or (probes_last) [d][P].
template <class V>
void store_state(const float* buf, float* state, bool probes_last, int P, int d, int lanes) {
    if (!probes_last) return store_transposed<V>(buf, state, P, d, lanes);
    for (int i = 0; i < d; ++i)
        for (int p = 0; p < P; ++p) state[static_cast<ptrdiff_t>(i) * P + p] = buf[static_cast<ptrdiff_t>(i) * lanes + p];
}

// out [d][out_lanes] <- lanes [0, P) of buf [d][lanes] (one user of a packed register), padding zero.
void unpack_lanes(const float* buf, int lanes, float* out, int out_lanes, int P, int d) {
    std::memset(out, 0, sizeof(float) * static_cast<size_t>(d) * out_lanes);
    for (int i = 0; i < d; ++i)
        std::memcpy(out + static_cast<ptrdiff_t>(i) * out_lanes, buf + static_cast<ptrdiff_t>(i) * lanes, sizeof(float) * P);
}

// probe[v] += x * 0 over the d rows of buf [d][lanes]: stays 0 unless some x is NaN or infinite
// (inf * 0 is NaN), which is one vector operation per value instead of a branch.
template <class V>
void accumulate_non_finite(const float* buf, float* probe, int d, int lanes) {
    using R = typename V::reg;
    const R zero = V::zero();
    for (int v = 0; v < lanes; v += V::W) {
        R acc = V::load(probe + v);
        for (int i = 0; i < d; ++i) acc = V::add(acc, V::mul(V::load(buf + static_cast<ptrdiff_t>(i) * lanes + v), zero));
        V::store(probe + v, acc);
    }
}

// The Q row pointers, b + mu, ratings and weights (times `scale`) of `count` ratings.
template <class RowOf>
void gather(const HeadView& head, const CsrView& data, int count, RowOf row_of, UserBuffers& b, float scale) {
    for (int k = 0; k < count; ++k) {
        const int64_t row = row_of(k);
        const int64_t item = data.items[row];
        b.rows[k] = head.item_vectors + item * head.h;
        b.offset[k] = head.item_bias[item] + head.global_bias;
        b.rating[k] = data.ratings[row];
        b.coef[k] = data.weights[row] * scale;
    }
}

// --------------------------------------------------------------------------- validation of one user

// b.loss[v] = sum over the user's ratings in `data` of w (pred - r)^2 (per lane, in double), for
// the tower's features [h][lanes] of the user's current embeddings.
template <class V>
void user_validation_sums(const HeadView& head, const CsrView& data, int64_t user, const float* features,
                          UserBuffers& b, int lanes) {
    using R = typename V::reg;
    for (int v = 0; v < lanes; ++v) b.loss[v] = 0.0;
    const int64_t start = data.indptr[user];
    const int64_t n = data.indptr[user + 1] - start;
    for (int64_t t0 = 0; t0 < n; t0 += kTile) {
        const int count = static_cast<int>(n - t0 < kTile ? n - t0 : kTile);
        gather(head, data, count, [&](int k) { return start + t0 + k; }, b, 1.0f);
        gemm<V, false>(count, head.h, lanes, ItemRows{b.rows}, features, b.tile);
        for (int k = 0; k < count; ++k) {
            const float* row = b.tile + static_cast<ptrdiff_t>(k) * lanes;
            const R offset = V::set1(b.offset[k]), rating = V::set1(b.rating[k]), weight = V::set1(b.coef[k]);
            for (int v = 0; v < lanes; v += V::W) {
                const R diff = V::sub(V::add(V::load(row + v), offset), rating);
                V::add_to_double(b.loss + v, V::mul(weight, V::mul(diff, diff)));
            }
        }
    }
}

// Adds the user's sums exactly to the thread's limbs of one checkpoint; flags lanes whose sum is
// not finite.
inline void add_user_sums(UserBuffers& b, int P, int lanes, int checkpoint) {
    FixedSum* sums = b.sums + static_cast<ptrdiff_t>(checkpoint) * lanes;
    uint8_t* bad = b.bad + static_cast<ptrdiff_t>(checkpoint) * lanes;
    for (int p = 0; p < P; ++p)
        if (!sums[p].add(b.loss[p])) bad[p] = 1;
}

// Each thread's outputs are added into the call's: integers and flags, so the schedule (which
// thread ran which user, in which order) cannot change a bit.
inline void merge_outputs(const UserBuffers& b, int checkpoints, int P, int lanes, int64_t* limbs, uint8_t* finite) {
    for (int k = 0; k < checkpoints; ++k)
        for (int p = 0; p < P; ++p) {
            if (b.bad[k * lanes + p]) finite[k * P + p] = 0;
            if (limbs != nullptr) b.sums[k * lanes + p].add_to(limbs + (static_cast<ptrdiff_t>(k) * P + p) * kFixedLimbs);
        }
}

// --------------------------------------------------------------------------- training

// Adam's bias corrections 1 / (1 - beta^t) of step count t, rounded to float once (in double
// before, as the reference computes them).  A user with S steps an epoch takes the counts
// (epoch_start, epoch_start + n_epochs] * S of the call, so a table holds, for each distinct S of
// the call's users, those n_epochs * S counts (std::pow twice per count instead of twice per user
// and step; never more entries than the call has steps), unless it would exceed kMaxSteps (8 MB):
// then std::pow per step.  The same values either way.
class BiasCorrections {
public:
    static constexpr int64_t kMaxSteps = int64_t{1} << 20;

    // has_steps[S]: some user of the call takes S steps an epoch.
    BiasCorrections(const OptimizerView& opt, int64_t epoch_start, int64_t n_epochs, const std::vector<bool>& has_steps)
        : opt_(opt), epoch_start_(epoch_start) {
        if (!opt.adam) return;
        segment_.assign(has_steps.size(), -1);
        int64_t entries = 0;
        for (size_t S = 1; S < has_steps.size(); ++S)
            if (has_steps[S]) {
                segment_[S] = entries;
                entries += n_epochs * static_cast<int64_t>(S);  // <= 2^62 (module.cpp): no overflow
                if (entries > kMaxSteps) break;
            }
        if (entries > kMaxSteps) {
            segment_.clear();
            return;
        }
        table_.resize(2 * static_cast<size_t>(entries));
        for (int64_t S = 1; S < static_cast<int64_t>(has_steps.size()); ++S) {
            if (segment_[S] < 0) continue;
            for (int64_t k = 0; k < n_epochs * S; ++k) {
                float* at = &table_[2 * static_cast<size_t>(segment_[S] + k)];
                compute(epoch_start * S + k + 1, at, at + 1);
            }
        }
    }

    // The corrections of step count t of a user with S steps an epoch (t in the call's counts).
    void get(int64_t S, int64_t t, float* unbias1, float* unbias2) const {
        if (segment_.empty()) return compute(t, unbias1, unbias2);
        const float* at = &table_[2 * static_cast<size_t>(segment_[S] + t - epoch_start_ * S - 1)];
        *unbias1 = at[0];
        *unbias2 = at[1];
    }

private:
    void compute(int64_t t, float* unbias1, float* unbias2) const {
        *unbias1 = static_cast<float>(1.0 / (1.0 - std::pow(opt_.beta1, static_cast<double>(t))));
        *unbias2 = static_cast<float>(1.0 / (1.0 - std::pow(opt_.beta2, static_cast<double>(t))));
    }

    OptimizerView opt_;
    int64_t epoch_start_;
    std::vector<int64_t> segment_;  // [S] -> the first entry of S's counts in table_, -1 where no user has S
    std::vector<float> table_;      // [entry] -> (unbias1, unbias2)
};

// The constants are the step spec's (in double, rounded to float once, as the reference does);
// the bias corrections are per lane (b.unbias1, b.unbias2).  MASKED: lanes with b.live = 0 keep
// their state.
template <class V, bool MASKED>
void adam_update(UserBuffers& b, const OptimizerView& opt, const float* grad, int d, int lanes) {
    using R = typename V::reg;
    const R beta1 = V::set1(static_cast<float>(opt.beta1)), beta2 = V::set1(static_cast<float>(opt.beta2));
    const R rest1 = V::set1(static_cast<float>(1.0 - opt.beta1)), rest2 = V::set1(static_cast<float>(1.0 - opt.beta2));
    const R eps = V::set1(static_cast<float>(opt.eps));
    for (int i = 0; i < d; ++i) {
        const ptrdiff_t row = static_cast<ptrdiff_t>(i) * lanes;
        for (int v = 0; v < lanes; v += V::W) {
            const R e = V::load(b.e + row + v), m0 = V::load(b.m + row + v), s0 = V::load(b.v + row + v);
            const R g = V::fmadd(V::load(b.reg2 + v), e, V::load(grad + row + v));  // + 2 reg e
            R m = V::fmadd(beta1, m0, V::mul(rest1, g));
            R s = V::fmadd(beta2, s0, V::mul(rest2, V::mul(g, g)));
            const R step_size = V::div(V::mul(V::load(b.lr + v), V::mul(m, V::load(b.unbias1 + v))),
                                       V::add(V::sqrt(V::mul(s, V::load(b.unbias2 + v))), eps));
            R next = V::sub(e, step_size);
            if constexpr (MASKED) {
                m = V::blend(b.live + v, m, m0);
                s = V::blend(b.live + v, s, s0);
                next = V::blend(b.live + v, next, e);
            }
            V::store(b.m + row + v, m);
            V::store(b.v + row + v, s);
            V::store(b.e + row + v, next);
        }
        prefetch_some(b.prefetch, kPrefetchPerRow);
    }
}

template <class V, bool MASKED>
void sgd_update(UserBuffers& b, const float* grad, int d, int lanes) {
    using R = typename V::reg;
    for (int i = 0; i < d; ++i) {
        const ptrdiff_t row = static_cast<ptrdiff_t>(i) * lanes;
        for (int v = 0; v < lanes; v += V::W) {
            const R e = V::load(b.e + row + v);
            const R g = V::fmadd(V::load(b.reg2 + v), e, V::load(grad + row + v));
            R next = V::sub(e, V::mul(V::load(b.lr + v), g));
            if constexpr (MASKED) next = V::blend(b.live + v, next, e);
            V::store(b.e + row + v, next);
        }
    }
}

// Gradient of (1/|C|) sum_c w_c (pred_c - r_c)^2 w.r.t. the features, rows = the step's ratings.
// Returns the gradient [h][lanes] in b.g.
template <class V>
void feature_gradient(const TrainArgs& a, int64_t start, const uint32_t* positions, int count, const float* features,
                      UserBuffers& b, int lanes) {
    using R = typename V::reg;
    const HeadView& head = a.head;
    const float coef = 2.0f / static_cast<float>(count);
    for (int t0 = 0; t0 < count; t0 += kTile) {
        const int n = count - t0 < kTile ? count - t0 : kTile;
        gather(head, a.data, n, [&](int k) { return start + positions[t0 + k]; }, b, coef);
        gemm<V, false>(n, head.h, lanes, ItemRows{b.rows}, features, b.tile, b.prefetch);  // pred - offset
        for (int k = 0; k < n; ++k) {
            float* row = b.tile + static_cast<ptrdiff_t>(k) * lanes;
            const R offset = V::set1(b.offset[k]), rating = V::set1(b.rating[k]), coef_k = V::set1(b.coef[k]);
            for (int v = 0; v < lanes; v += V::W)
                V::store(row + v, V::mul(coef_k, V::sub(V::add(V::load(row + v), offset), rating)));
        }
        // d loss / d features = sum_k (d loss / d pred_k) Q[i_k].
        if (t0 == 0)
            gemm<V, false>(head.h, n, lanes, ItemColumns{b.rows}, b.tile, b.g, b.prefetch);
        else
            gemm<V, true>(head.h, n, lanes, ItemColumns{b.rows}, b.tile, b.g, b.prefetch);
    }
}

// Users that train together: one (probes only), or up to G in lanes.
struct Group {
    int64_t user[kMaxGroup];
    int size = 0;
    bool packed = false;  // users in lanes: user g's probes are lanes [g P, g P + P)
};

// item_block [h][W] <- the item rows of the W lanes (row l = rows[l]): column blocks transposed in
// registers, the last h % kRowColumns columns one float at a time.
template <class V>
void transpose_item_rows(const float* const* rows, int h, float* item_block) {
    constexpr int W = V::W, C = V::kRowColumns;
    int j = 0;
    for (; j + C <= h; j += C) V::transpose_rows(rows, j, item_block + j * W);
    for (; j < h; ++j)
        for (int l = 0; l < W; ++l) item_block[j * W + l] = rows[l][j];
}

// Ratings [k0, k0 + n) of every lane's minibatch -> slot k - k0 of b.lane_rows, lane_offset,
// lane_rating, lane_coef and slot_live (slots past a lane's count: item 0, zeros, not live).  One
// user's ratings in a loop of their own, stored straight into their lanes: the loads of one rating
// do not wait for another's, and the products read whole vectors.
template <class V>
void stage_ratings(const TrainArgs& a, const Group& grp, const int64_t* start, const uint32_t* const* positions,
                   const int* count, const float* coef, int k0, int n, UserBuffers& b) {
    constexpr int W = V::W;
    const int P = a.n_probes, h = a.head.h;
    // Locals, so that the stores below cannot make the compiler reload them.
    const float* const item_vectors = a.head.item_vectors;
    const float* const item_bias = a.head.item_bias;
    const float global_bias = a.head.global_bias;
    const int32_t* const items = a.data.items;
    const float* const ratings = a.data.ratings;
    const float* const weights = a.data.weights;
    auto put = [&](int k, int lane, const float* row, float offset, float rating, float weight, int32_t live) {
        b.lane_rows[k * W + lane] = row;
        b.lane_offset[k * W + lane] = offset;
        b.lane_rating[k * W + lane] = rating;
        b.lane_coef[k * W + lane] = weight;
        b.slot_live[k * W + lane] = live;
    };
    for (int g = 0; g < grp.size; ++g) {  // lanes [g P, g P + P) are user g's
        const int live = count[g] - k0 < 0 ? 0 : (count[g] - k0 < n ? count[g] - k0 : n);
        for (int k = 0; k < live; ++k) {
            const int64_t at = start[g] + positions[g][k0 + k];
            const int64_t item = items[at];
            const float* row = item_vectors + item * h;
            const float offset = item_bias[item] + global_bias, rating = ratings[at], weight = weights[at] * coef[g];
            for (int p = 0; p < P; ++p) put(k, g * P + p, row, offset, rating, weight, -1);
        }
        for (int k = live; k < n; ++k)  // no rating here: item 0, its d loss / d pred masked to 0
            for (int p = 0; p < P; ++p) put(k, g * P + p, item_vectors, 0.0f, 0.0f, 0.0f, 0);
    }
    for (int lane = grp.size * P; lane < W; ++lane)  // lanes of no user
        for (int k = 0; k < n; ++k) put(k, lane, item_vectors, 0.0f, 0.0f, 0.0f, 0);
}

// The gradient of one minibatch step of every user of a packed register, w.r.t. the features
// [h][W] (one register wide), kPackedRatings ratings of every lane's minibatch at a time (their
// dot products are independent chains).  User g's minibatch has count[g] ratings (0: it takes no
// step).  Per lane, the same operations in the same order as feature_gradient (dot products and
// the gradient's sum over k = 0, 1, ... with multiply-adds from zero), with that lane's item row
// transposed into its lane instead of broadcast.  Past a lane's count (the block is always
// kPackedRatings wide) its d loss / d pred is +0, so the gradient's multiply-add adds q * 0 = +-0
// (q is finite: heads are checked) to a sum that is never -0: the sum is unchanged, bit for bit.
template <class V>
void packed_feature_gradient(const TrainArgs& a, const Group& grp, int64_t first, const int* count,
                             const float* features, UserBuffers& b) {
    using R = typename V::reg;
    constexpr int W = V::W;
    const int h = a.head.h;
    int most = 0;
    float coef[kMaxGroup];
    int64_t start[kMaxGroup];
    const uint32_t* positions[kMaxGroup];
    for (int g = 0; g < grp.size; ++g) {
        most = count[g] > most ? count[g] : most;
        coef[g] = count[g] > 0 ? 2.0f / static_cast<float>(count[g]) : 0.0f;
        start[g] = a.data.indptr[grp.user[g]];
        positions[g] = b.order + g * b.order_stride + first;
    }
    for (int k0 = 0; k0 < most; k0 += kPackedRatings) {
        const int slot = k0 % kStagedRatings;
        if (slot == 0) {
            const int left = (most - k0 + kPackedRatings - 1) / kPackedRatings * kPackedRatings;
            const int n = left < kStagedRatings ? left : kStagedRatings;
            stage_ratings<V>(a, grp, start, positions, count, coef, k0, n, b);
        }
        for (int r = 0; r < kPackedRatings; ++r)
            transpose_item_rows<V>(b.lane_rows + (slot + r) * W, h, b.item_block + r * h * W);
        R pred[kPackedRatings];
        for (int r = 0; r < kPackedRatings; ++r) pred[r] = V::zero();
        for (int j = 0; j < h; ++j) {
            const R f = V::load(features + j * W);
            for (int r = 0; r < kPackedRatings; ++r)
                pred[r] = V::fmadd(V::load(b.item_block + (r * h + j) * W), f, pred[r]);
        }
        R diff[kPackedRatings];
        for (int r = 0; r < kPackedRatings; ++r) {
            const int at = (slot + r) * W;
            const R x = V::mul(V::load(b.lane_coef + at),
                               V::sub(V::add(pred[r], V::load(b.lane_offset + at)), V::load(b.lane_rating + at)));
            diff[r] = V::blend(b.slot_live + at, x, V::zero());
        }
        for (int j = 0; j < h; ++j) {
            R acc = k0 == 0 ? V::fmadd(V::load(b.item_block + j * W), diff[0], V::zero()) : V::load(b.g + j * W);
            for (int r = k0 == 0 ? 1 : 0; r < kPackedRatings; ++r)
                acc = V::fmadd(V::load(b.item_block + (r * h + j) * W), diff[r], acc);
            V::store(b.g + j * W, acc);
        }
    }
}

// Permutation::fill in two passes, the same order: first the bijection of every x in
// [0, 2**bits) into `table`, N values at a time in integer vector registers (GCC vector
// extensions, compiled for each file's instruction set; N = 8 for AVX2 and AVX-512, else 4), with
// no walking, so the blocks are independent and pipeline; then the cycle walk of each position
// through the table: order[i] = the first of table[i], table[table[i]], ... inside [0, n).
// 2**bits < 2 n, so a position walks fewer than one step on average; the first step selects
// instead of branching (the branch would be mispredicted on up to half of the positions: on
// 20-200 ratings, a third of the permutation's time), the rest loop (rarely more than once).
typedef uint32_t Words4 __attribute__((vector_size(16)));
typedef uint32_t Words8 __attribute__((vector_size(32)));

template <class Words>
struct Positions {
    static constexpr int N = sizeof(Words) / sizeof(uint32_t);

    static void rounds(const Permutation& perm, Words* x) {
        for (int r = 0; r < kPermRounds; ++r) {
            *x = (*x * perm.mult(r) + perm.add(r)) & perm.mask();
            *x ^= *x >> perm.shift();
        }
    }

    static void fill(const Permutation& perm, uint32_t* table, uint32_t* order) {
        const uint32_t n = perm.n();
        if (n <= 1) {
            if (n == 1) order[0] = 0;
            return;
        }
        const uint64_t size = uint64_t{perm.mask()} + 1;  // 2**bits
        Words lane;
        for (int l = 0; l < N; ++l) lane[l] = static_cast<uint32_t>(l);
        for (uint64_t x0 = 0; x0 < size; x0 += N) {
            Words x = lane + static_cast<uint32_t>(x0);
            rounds(perm, &x);
            if (x0 + N <= size)
                std::memcpy(table + x0, &x, sizeof(x));
            else
                for (uint64_t l = 0; l < size - x0; ++l) table[x0 + l] = x[l];
        }
        for (uint32_t i = 0; i < n; ++i) {
            uint32_t x = table[i];
            const uint32_t walk = 0u - static_cast<uint32_t>(x >= n);  // ~0 where x is outside [0, n)
            x = (table[x] & walk) | (x & ~walk);                       // x < 2**bits: inside the table
            while (x >= n) x = table[x];
            order[i] = x;
        }
    }
};

// order[0..n) <- the permutation's order; `table` has room for 2**bits < 2 n values.
template <class V>
void fill_order(const Permutation& perm, uint32_t* table, uint32_t* order) {
    using Words = typename std::conditional<(V::W >= 8), Words8, Words4>::type;
    Positions<Words>::fill(perm, table, order);
}

// Ratings of a user (in the training data).
inline int64_t rating_count(const CsrView& data, int64_t user) { return data.indptr[user + 1] - data.indptr[user]; }

// One epoch of the group's minibatch steps: the contract's permutations, minibatch sizes and Adam
// step counts of each user; a user with fewer steps than the group's most idles (keeps its state)
// for the rest of the epoch.
template <class V>
void train_epoch(const TrainArgs& a, const Group& grp, int64_t epoch, const BiasCorrections& bias, UserBuffers& b,
                 int lanes) {
    const HeadView& head = a.head;
    const int64_t B = a.batch_size;
    int64_t n[kMaxGroup], steps[kMaxGroup], most = 0;
    for (int g = 0; g < grp.size; ++g) {
        n[g] = rating_count(a.data, grp.user[g]);
        steps[g] = (n[g] + B - 1) / B;
        most = steps[g] > most ? steps[g] : most;
        fill_order<V>(Permutation(a.seed, static_cast<uint32_t>(epoch), static_cast<uint32_t>(a.data.keys[grp.user[g]]),
                               static_cast<uint32_t>(n[g])),
                   b.bijection, b.order + g * b.order_stride);
    }
    // Lanes [g P, g P + P) are user g's when packed; all lanes are user 0's otherwise.
    const int per_user = grp.packed ? a.n_probes : lanes;
    for (int64_t chunk = 0; chunk < most; ++chunk) {
        const int64_t first = chunk * B;
        int count[kMaxGroup];
        bool all_live = true;
        for (int v = grp.size * per_user; v < lanes; ++v) b.live[v] = 0;  // lanes of no user
        for (int g = 0; g < grp.size; ++g) {
            count[g] = chunk < steps[g] ? static_cast<int>(n[g] - first < B ? n[g] - first : B) : 0;
            all_live = all_live && count[g] > 0;
            float unbias1 = 0.0f, unbias2 = 0.0f;
            if (a.optimizer.adam && count[g] > 0)
                bias.get(steps[g], adam_step(epoch, n[g], B, chunk), &unbias1, &unbias2);
            for (int v = g * per_user; v < (g + 1) * per_user && v < lanes; ++v) {
                b.live[v] = count[g] > 0 ? -1 : 0;
                b.unbias1[v] = unbias1;
                b.unbias2[v] = unbias2;
            }
        }
        const float* features = tower_forward<V>(head.tower, b.e, lanes, b.act);
        if (grp.packed)
            packed_feature_gradient<V>(a, grp, first, count, features, b);
        else
            feature_gradient<V>(a, a.data.indptr[grp.user[0]], b.order + first, count[0], features, b, lanes);
        const float* grad = tower_backward<V>(head.tower, b.g, b.spare, lanes, b.act);
        if (a.optimizer.adam)
            all_live ? adam_update<V, false>(b, a.optimizer, grad, head.d, lanes)
                     : adam_update<V, true>(b, a.optimizer, grad, head.d, lanes);
        else
            all_live ? sgd_update<V, false>(b, grad, head.d, lanes) : sgd_update<V, true>(b, grad, head.d, lanes);
    }
}

// Checkpoint k of a user, while its state is in this thread's buffers: finiteness of the state,
// the validation sums, and a snapshot of the embeddings.  The moments are checked at the last
// checkpoint only: a NaN there reaches the embeddings at the next step, and it is the embeddings
// (and their loss) that a checkpoint judges.
template <class V>
void user_checkpoint(const TrainArgs& a, int64_t user, int k, UserBuffers& b, int lanes) {
    const int P = a.n_probes, d = a.head.d;
    std::memset(b.probe, 0, sizeof(float) * static_cast<size_t>(lanes));
    accumulate_non_finite<V>(b.e, b.probe, d, lanes);
    if (a.optimizer.adam && k == a.n_checkpoints - 1) {
        accumulate_non_finite<V>(b.m, b.probe, d, lanes);
        accumulate_non_finite<V>(b.v, b.probe, d, lanes);
    }
    uint8_t* bad = b.bad + static_cast<ptrdiff_t>(k) * lanes;
    for (int p = 0; p < P; ++p)
        if (b.probe[p] != b.probe[p]) bad[p] = 1;  // NaN: some value was not finite
    if (a.val.indptr != nullptr && a.val.indptr[user + 1] > a.val.indptr[user]) {
        const float* features = tower_forward<V>(a.head.tower, b.e, lanes, b.act);
        user_validation_sums<V>(a.head, a.val, user, features, b, lanes);
        add_user_sums(b, P, lanes, k);
    }
    if (a.snapshots != nullptr && k < a.n_checkpoints - 1)
        store_transposed<V>(b.e, a.snapshots + (static_cast<ptrdiff_t>(k) * a.data.n_users + user) * P * d, P, d, lanes);
}

// Checkpoint k of every user of the group.  A packed user is first unpacked into `out` (one
// user's buffers, out_lanes wide), so it is checked and validated exactly as if trained alone.
template <class V>
void group_checkpoint(const TrainArgs& a, const Group& grp, int k, UserBuffers& b, int lanes, UserBuffers& out,
                      int out_lanes) {
    if (!grp.packed) return user_checkpoint<V>(a, grp.user[0], k, b, lanes);
    const int P = a.n_probes, d = a.head.d;
    for (int g = 0; g < grp.size; ++g) {
        unpack_lanes(b.e + g * P, lanes, out.e, out_lanes, P, d);
        if (a.optimizer.adam && k == a.n_checkpoints - 1) {
            unpack_lanes(b.m + g * P, lanes, out.m, out_lanes, P, d);
            unpack_lanes(b.v + g * P, lanes, out.v, out_lanes, P, d);
        }
        user_checkpoint<V>(a, grp.user[g], k, out, out_lanes);
    }
}

// b.reg2 [lanes] <- 2 reg_u of each lane's probe p and user u: reg_u = regs[p] + damping[u] in
// float32 (docs/semantics.md); lanes of no user (padding, or past a packed group's users) 0.
inline void set_regularization(const TrainArgs& a, const Group& grp, UserBuffers& b, int lanes) {
    const int P = a.n_probes;
    const int per_user = grp.packed ? P : lanes;  // lanes [g P, g P + P) are user g's when packed
    for (int v = 0; v < lanes; ++v) {
        const int g = v / per_user, p = v % per_user;
        const bool used = g < grp.size && p < P;
        const float damping = used && a.damping != nullptr ? a.damping[grp.user[g]] : 0.0f;
        b.reg2[v] = used ? 2.0f * (a.regs[p] + damping) : 0.0f;
    }
}

// Every epoch of the call with its checkpoints, on the group's state in b.e / b.m / b.v.
template <class V>
void train_loaded_group(const TrainArgs& a, const Group& grp, int64_t n, const BiasCorrections& bias, UserBuffers& b,
                        int lanes, UserBuffers& out, int out_lanes) {
    set_regularization(a, grp, b, lanes);
    int k = 0;
    for (int64_t t = 0; t < a.n_epochs; ++t) {
        if (n > 0) train_epoch<V>(a, grp, a.epoch_start + t, bias, b, lanes);
        for (; k < a.n_checkpoints && a.checkpoint_ends[k] == t + 1; ++k)
            group_checkpoint<V>(a, grp, k, b, lanes, out, out_lanes);
    }
    for (; k < a.n_checkpoints; ++k) group_checkpoint<V>(a, grp, k, b, lanes, out, out_lanes);  // ends of 0 epochs
}

// A probes-last state is already [d][lanes] where the probes fill whole registers (lanes = P) and
// the arrays are register-aligned: a user alone then trains in place, with no copy in or out.
template <class V>
bool trains_in_place(const TrainArgs& a, const Group& grp, int lanes) {
    const auto aligned = [](const float* p) { return reinterpret_cast<uintptr_t>(p) % (sizeof(float) * V::W) == 0; };
    return a.probes_last && !grp.packed && lanes == a.n_probes && aligned(a.emb) &&
           (!a.optimizer.adam || (aligned(a.adam_m) && aligned(a.adam_v)));
}

// The whole call for one group: load (or start fresh), train every epoch with its checkpoints,
// store.  `out` receives the checkpoints' outputs of a packed group (see group_checkpoint).
template <class V>
void train_group(const TrainArgs& a, const Group& grp, const BiasCorrections& bias, UserBuffers& b, int lanes,
                 UserBuffers& out, int out_lanes) {
    const int P = a.n_probes, d = a.head.d;
    int64_t n = 0;  // the group's most ratings
    for (int g = 0; g < grp.size; ++g) n = rating_count(a.data, grp.user[g]) > n ? rating_count(a.data, grp.user[g]) : n;
    const bool adam = a.optimizer.adam, fresh = a.init != nullptr;
    if (trains_in_place<V>(a, grp, lanes)) {
        const int64_t user = grp.user[0];
        const ptrdiff_t offset = static_cast<ptrdiff_t>(user) * P * d;
        UserBuffers state = b;  // b's scratch and outputs, the user's state in place
        state.e = a.emb + offset;
        if (adam) {
            state.m = a.adam_m + offset;
            state.v = a.adam_v + offset;
        }
        if (fresh) {
            place_broadcast(a.init + static_cast<ptrdiff_t>(user) * d, state.e, P, d, lanes);
            if (adam) {
                std::memset(state.m, 0, sizeof(float) * static_cast<size_t>(d) * lanes);
                std::memset(state.v, 0, sizeof(float) * static_cast<size_t>(d) * lanes);
            }
        }
        return train_loaded_group<V>(a, grp, n, bias, state, lanes, state, out_lanes);
    }
    const size_t state_bytes = sizeof(float) * static_cast<size_t>(d) * lanes;
    std::memset(b.e, 0, state_bytes);
    if (adam) {
        std::memset(b.m, 0, state_bytes);
        std::memset(b.v, 0, state_bytes);
    }
    for (int g = 0; g < grp.size; ++g) {
        const int64_t user = grp.user[g];
        const ptrdiff_t offset = static_cast<ptrdiff_t>(user) * P * d;
        if (fresh) {  // a fresh batch: every probe from the init, moments from zero
            place_broadcast(a.init + static_cast<ptrdiff_t>(user) * d, b.e + g * P, P, d, lanes);
        } else {
            place_state<V>(a.emb + offset, a.probes_last, b.e + g * P, P, d, lanes);
            if (adam) {
                place_state<V>(a.adam_m + offset, a.probes_last, b.m + g * P, P, d, lanes);
                place_state<V>(a.adam_v + offset, a.probes_last, b.v + g * P, P, d, lanes);
            }
        }
    }
    train_loaded_group<V>(a, grp, n, bias, b, lanes, out, out_lanes);
    if (n == 0 && !fresh) return;  // nothing moved
    for (int g = 0; g < grp.size; ++g) {
        const ptrdiff_t offset = static_cast<ptrdiff_t>(grp.user[g]) * P * d;
        store_state<V>(b.e + g * P, a.emb + offset, a.probes_last, P, d, lanes);
        if (adam) {
            store_state<V>(b.m + g * P, a.adam_m + offset, a.probes_last, P, d, lanes);
            store_state<V>(b.v + g * P, a.adam_v + offset, a.probes_last, P, d, lanes);
        }
    }
}

// Users per register: W / P when the probes fill at most half of one, else 1.
template <class V>
int users_per_register(const TrainArgs& a) {
    if (!a.users_in_lanes || 2 * a.n_probes > V::W) return 1;
    return V::W / a.n_probes;
}

// Consecutive users of `order` (heaviest first, so a group's counts are close and its lanes stay
// busy), `size` per group.  The last group is packed (users in lanes) only when it fills more than
// half of the register: the transposes of a packed step cost about as much as half a register of
// users trained one at a time.  Otherwise its users train one per register.
std::vector<Group> make_groups(const TrainArgs& a, int size) {
    std::vector<Group> groups;
    for (int64_t i = 0; i < a.n_order; ++i) {
        if (groups.empty() || groups.back().size == size) {
            groups.emplace_back();
            groups.back().packed = size > 1;
        }
        groups.back().user[groups.back().size++] = a.order[i];
    }
    if (!groups.empty() && groups.back().packed && 2 * groups.back().size <= size) {
        const Group last = groups.back();
        groups.pop_back();
        for (int g = 0; g < last.size; ++g) {
            groups.emplace_back();
            groups.back().user[groups.back().size++] = last.user[g];
        }
    }
    return groups;
}

template <class V>
void run_training(const TrainArgs& a) {
    const int P = a.n_probes, K = a.n_checkpoints;
    for (int64_t i = 0; i < static_cast<int64_t>(K) * P; ++i) a.finite[i] = 1;
    if (a.val_limbs != nullptr)
        std::memset(a.val_limbs, 0, sizeof(int64_t) * static_cast<size_t>(K) * P * kFixedLimbs);
    if (a.n_order == 0 || P == 0) return;
    const int group = users_per_register<V>(a);
    const bool packed = group > 1;
    const int user_lanes = padded_lanes(P, V::W);
    const int lanes = packed ? V::W : user_lanes;
    int64_t max_ratings = 0;
    for (int64_t i = 0; i < a.n_order; ++i)
        max_ratings = rating_count(a.data, a.order[i]) > max_ratings ? rating_count(a.data, a.order[i]) : max_ratings;
    const auto steps_of = [&](int64_t n) { return static_cast<size_t>((n + a.batch_size - 1) / a.batch_size); };
    std::vector<bool> has_steps(steps_of(max_ratings) + 1, false);  // [S]: some user takes S steps an epoch
    for (int64_t i = 0; i < a.n_order; ++i) has_steps[steps_of(rating_count(a.data, a.order[i]))] = true;
    const BiasCorrections bias(a.optimizer, a.epoch_start, a.n_epochs, has_steps);
    const std::vector<Group> groups = make_groups(a, group);
    const auto n_groups = static_cast<int64_t>(groups.size());
    const int threads = static_cast<int>(n_groups < a.num_threads ? n_groups : a.num_threads);
    const size_t group_bytes = UserBuffers::layout(nullptr, nullptr, a.head, lanes, max_ratings, K, group);
    const size_t out_bytes = packed ? UserBuffers::layout(nullptr, nullptr, a.head, user_lanes, 0, K) : 0;
    const size_t per_thread = group_bytes + out_bytes;
    Scratch scratch(per_thread * threads);
    std::atomic<int64_t> next_group{0};
#pragma omp parallel num_threads(threads)
    {
        char* mine = scratch.data() + per_thread * omp_get_thread_num();
        UserBuffers b, unpacked;
        UserBuffers::layout(&b, mine, a.head, lanes, max_ratings, K, group);
        b.clear_outputs(K, lanes);
        if (packed) {
            UserBuffers::layout(&unpacked, mine + group_bytes, a.head, user_lanes, 0, K);
            unpacked.clear_outputs(K, user_lanes);
        }
        // Where a packed group's checkpoint outputs go (a user alone writes to b; lanes == user_lanes).
        UserBuffers& out = packed ? unpacked : b;
        for (int v = 0; v < lanes; ++v)  // lane v holds probe v % P (of user v / P when packed)
            b.lr[v] = v < group * P ? a.lrs[v % P] : 0.0f;  // b.reg2 is per user: set_regularization
        // Users come heaviest first, so the dynamic schedule ends with small users.  Each thread
        // claims its next group before it trains the current one, so that it can prefetch that
        // group's state (StatePrefetch).  A packed group's state is a few lines (P <= W / 2): they
        // are asked for at once, and its steps (one register wide) are not interrupted.
        StatePrefetch prefetch;
        b.prefetch = packed ? nullptr : &prefetch;
        for (int64_t i = next_group.fetch_add(1), j; i < n_groups; i = j) {
            j = next_group.fetch_add(1);
            prefetch.start(a, j < n_groups ? groups[j].user : nullptr, j < n_groups ? groups[j].size : 0);
            if (packed) prefetch.advance(std::numeric_limits<int>::max());
            train_group<V>(a, groups[i], bias, b, lanes, out, user_lanes);
        }
#pragma omp critical
        {
            merge_outputs(b, K, P, lanes, a.val_limbs, a.finite);
            if (packed) merge_outputs(unpacked, K, P, user_lanes, a.val_limbs, a.finite);
        }
    }
}

// --------------------------------------------------------------------------- validation

// Each user's per-probe sum (double) is added exactly (add_fixed) to its thread's limbs; the
// threads' limbs are then added as integers, so nothing depends on the schedule.
template <class V>
void run_validation(const ValidationArgs& a) {
    const int P = a.n_probes;
    for (int p = 0; p < P; ++p) a.finite[p] = 1;
    std::memset(a.limbs, 0, sizeof(int64_t) * static_cast<size_t>(P) * kFixedLimbs);
    const int64_t n_users = a.data.n_users;
    if (n_users == 0 || P == 0) return;
    const int lanes = padded_lanes(P, V::W);
    const int threads = static_cast<int>(n_users < a.num_threads ? n_users : a.num_threads);
    const size_t per_thread = UserBuffers::layout(nullptr, nullptr, a.head, lanes, 0, 1);
    Scratch scratch(per_thread * threads);
#pragma omp parallel num_threads(threads)
    {
        UserBuffers b;
        UserBuffers::layout(&b, scratch.data() + per_thread * omp_get_thread_num(), a.head, lanes, 0, 1);
        b.clear_outputs(1, lanes);
#pragma omp for schedule(dynamic, 64)
        for (int64_t u = 0; u < n_users; ++u) {
            if (a.data.indptr[u + 1] == a.data.indptr[u]) continue;
            std::memset(b.e, 0, sizeof(float) * static_cast<size_t>(a.head.d) * lanes);
            place_state<V>(a.emb + static_cast<ptrdiff_t>(u) * P * a.head.d, a.probes_last, b.e, P, a.head.d, lanes);
            const float* features = tower_forward<V>(a.head.tower, b.e, lanes, b.act);
            user_validation_sums<V>(a.head, a.data, u, features, b, lanes);
            add_user_sums(b, P, lanes, 0);
        }
#pragma omp critical
        merge_outputs(b, 1, P, lanes, a.limbs, a.finite);
    }
}

}  // namespace
}  // namespace retrain
