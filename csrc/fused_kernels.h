// The fused training and validation kernels, written once over a SIMD vector type V and
// instantiated per instruction set by fused_sse4.cpp and fused_avx2.cpp.
//
// V provides: W (floats per register), reg, load/store (aligned), set1, zero, add, sub, mul, div,
// sqrt, fmadd(a, b, c) = a*b + c, relu(x), where_positive(g, y) = (y > 0 ? g : 0) and
// add_to_double(double* acc, x) (acc[0..W) += x).
//
// SIMD lanes are probes: one user's state is held transposed, [d][lanes] with lanes = P rounded
// up to W (padding lanes have lr = reg = 0), so every probe runs the same instructions in its own
// lane.  A probe's result therefore depends neither on P, nor on the other probes (a diverging
// probe cannot disturb them), nor on the thread count (one thread owns a user for the whole call).
//
// Everything is in an anonymous namespace: each instruction set gets its own copy, so the linker
// can never pick code compiled for AVX2 for the SSE4 path.
#pragma once

#include <omp.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "contract.h"
#include "fused.h"

namespace retrain {
namespace {

constexpr int kTile = 64;  // ratings per tile: bounds the scratch; their Q rows stay in L1 between the products
// Micro-kernel: kAccumulators registers (rows x vectors of lanes) sum independent chains, enough
// to hide the multiply-add latency; with the operands they fit in 16 vector registers.
constexpr int kAccumulators = 12;
constexpr int kBlockVectors = 2;
constexpr int64_t kValidationUsers = 64;   // users per validation block (fixed: sums are ordered)
constexpr double kBeta1 = 0.9, kBeta2 = 0.999;
constexpr float kAdamEps = 1e-8f;

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
inline void gemm_rows(int M, int K, const A& a, const float* B, ptrdiff_t ldb, float* C, ptrdiff_t ldc) {
    constexpr int MR = kAccumulators / NR;
    int m = 0;
    for (; m + MR <= M; m += MR) micro_kernel<V, MR, NR, ACCUMULATE>(m, K, a, B, ldb, C + m * ldc, ldc);
    gemm_tail<V, MR - 1, NR, ACCUMULATE>(M - m, m, K, a, B, ldb, C + m * ldc, ldc);
}

// C [M][lanes] (+)= A [M x K] * B [K][lanes]; lanes is a multiple of V::W.  Each lane of C sums
// its K terms in order k = 0, 1, ..., whatever the blocking.
template <class V, bool ACCUMULATE, class A>
void gemm(int M, int K, int lanes, const A& a, const float* B, float* C) {
    constexpr int step = kBlockVectors * V::W;
    int n = 0;
    for (; n + step <= lanes; n += step) gemm_rows<V, kBlockVectors, ACCUMULATE>(M, K, a, B + n, lanes, C + n, lanes);
    for (; n < lanes; n += V::W) gemm_rows<V, 1, ACCUMULATE>(M, K, a, B + n, lanes, C + n, lanes);
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

// What one thread needs for one user: the state, tower activations, gradients and one tile.
struct UserBuffers {
    float *lr, *reg2, *e, *m, *v;
    float* act[kMaxLayers];
    float *g, *spare;             // feature / tower gradients (ping-pong)
    float *tile;                  // [kTile][lanes]: predictions, then d loss / d pred
    const float** rows;           // the tile's Q rows [kTile] (pointers into Q)
    float *offset, *rating, *coef;  // b + mu, r, w * scale [kTile]
    double* loss;                 // [lanes] validation sums
    uint32_t* order;              // the epoch's permutation [max ratings of a user]

    // Carve the buffers from `base`; with base = nullptr only measures (returns the bytes).
    static size_t layout(UserBuffers* b, char* base, const HeadView& head, int lanes, int64_t max_ratings) {
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
        t.loss = c.take<double>(lanes);
        t.order = c.take<uint32_t>(static_cast<size_t>(max_ratings));
        if (b != nullptr) *b = t;
        return static_cast<size_t>(c.next() - base);
    }
};

int padded_lanes(int n_probes, int width) { return (n_probes + width - 1) / width * width; }

// state [P][d] (one user's slice of [U, P, d]) -> buffer [d][lanes], padding lanes zero.
void load_transposed(const float* state, float* buf, int P, int d, int lanes) {
    std::memset(buf, 0, sizeof(float) * static_cast<size_t>(d) * lanes);
    for (int p = 0; p < P; ++p)
        for (int i = 0; i < d; ++i) buf[static_cast<ptrdiff_t>(i) * lanes + p] = state[static_cast<ptrdiff_t>(p) * d + i];
}

void store_transposed(const float* buf, float* state, int P, int d, int lanes) {
    for (int p = 0; p < P; ++p)
        for (int i = 0; i < d; ++i) state[static_cast<ptrdiff_t>(p) * d + i] = buf[static_cast<ptrdiff_t>(i) * lanes + p];
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

// --------------------------------------------------------------------------- training

template <class V>
void adam_update(UserBuffers& b, const float* grad, int d, int lanes, int64_t step) {
    using R = typename V::reg;
    const R beta1 = V::set1(static_cast<float>(kBeta1)), beta2 = V::set1(static_cast<float>(kBeta2));
    const R rest1 = V::set1(static_cast<float>(1.0 - kBeta1)), rest2 = V::set1(static_cast<float>(1.0 - kBeta2));
    const R unbias1 = V::set1(static_cast<float>(1.0 / (1.0 - std::pow(kBeta1, static_cast<double>(step)))));
    const R unbias2 = V::set1(static_cast<float>(1.0 / (1.0 - std::pow(kBeta2, static_cast<double>(step)))));
    const R eps = V::set1(kAdamEps);
    for (int i = 0; i < d; ++i) {
        const ptrdiff_t row = static_cast<ptrdiff_t>(i) * lanes;
        for (int v = 0; v < lanes; v += V::W) {
            const R e = V::load(b.e + row + v);
            const R g = V::fmadd(V::load(b.reg2 + v), e, V::load(grad + row + v));  // + 2 reg e
            const R m = V::fmadd(beta1, V::load(b.m + row + v), V::mul(rest1, g));
            const R s = V::fmadd(beta2, V::load(b.v + row + v), V::mul(rest2, V::mul(g, g)));
            V::store(b.m + row + v, m);
            V::store(b.v + row + v, s);
            const R step_size = V::div(V::mul(V::load(b.lr + v), V::mul(m, unbias1)),
                                       V::add(V::sqrt(V::mul(s, unbias2)), eps));
            V::store(b.e + row + v, V::sub(e, step_size));
        }
    }
}

template <class V>
void sgd_update(UserBuffers& b, const float* grad, int d, int lanes) {
    using R = typename V::reg;
    for (int i = 0; i < d; ++i) {
        const ptrdiff_t row = static_cast<ptrdiff_t>(i) * lanes;
        for (int v = 0; v < lanes; v += V::W) {
            const R e = V::load(b.e + row + v);
            const R g = V::fmadd(V::load(b.reg2 + v), e, V::load(grad + row + v));
            V::store(b.e + row + v, V::sub(e, V::mul(V::load(b.lr + v), g)));
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
        gemm<V, false>(n, head.h, lanes, ItemRows{b.rows}, features, b.tile);  // pred - offset
        for (int k = 0; k < n; ++k) {
            float* row = b.tile + static_cast<ptrdiff_t>(k) * lanes;
            const R offset = V::set1(b.offset[k]), rating = V::set1(b.rating[k]), coef_k = V::set1(b.coef[k]);
            for (int v = 0; v < lanes; v += V::W)
                V::store(row + v, V::mul(coef_k, V::sub(V::add(V::load(row + v), offset), rating)));
        }
        // d loss / d features = sum_k (d loss / d pred_k) Q[i_k].
        if (t0 == 0)
            gemm<V, false>(head.h, n, lanes, ItemColumns{b.rows}, b.tile, b.g);
        else
            gemm<V, true>(head.h, n, lanes, ItemColumns{b.rows}, b.tile, b.g);
    }
}

template <class V>
void train_user(const TrainArgs& a, int64_t user, UserBuffers& b, int lanes) {
    const HeadView& head = a.head;
    const int P = a.n_probes, d = head.d;
    const int64_t start = a.data.indptr[user];
    const int64_t n = a.data.indptr[user + 1] - start;
    const ptrdiff_t offset = static_cast<ptrdiff_t>(user) * P * d;
    load_transposed(a.emb + offset, b.e, P, d, lanes);
    if (a.adam) {
        load_transposed(a.adam_m + offset, b.m, P, d, lanes);
        load_transposed(a.adam_v + offset, b.v, P, d, lanes);
    }
    const int64_t steps = (n + a.batch_size - 1) / a.batch_size;
    const uint32_t key = static_cast<uint32_t>(a.data.keys[user]);
    for (int64_t epoch = a.epoch_start; epoch < a.epoch_start + a.n_epochs; ++epoch) {
        Permutation(a.seed, static_cast<uint32_t>(epoch), key, static_cast<uint32_t>(n)).fill(b.order);
        for (int64_t chunk = 0; chunk < steps; ++chunk) {
            const int64_t first = chunk * a.batch_size;
            const int count = static_cast<int>(n - first < a.batch_size ? n - first : a.batch_size);
            const float* features = tower_forward<V>(head.tower, b.e, lanes, b.act);
            feature_gradient<V>(a, start, b.order + first, count, features, b, lanes);
            const float* grad = tower_backward<V>(head.tower, b.g, b.spare, lanes, b.act);
            if (a.adam)
                adam_update<V>(b, grad, d, lanes, adam_step(epoch, n, a.batch_size, chunk));
            else
                sgd_update<V>(b, grad, d, lanes);
        }
    }
    store_transposed(b.e, a.emb + offset, P, d, lanes);
    if (a.adam) {
        store_transposed(b.m, a.adam_m + offset, P, d, lanes);
        store_transposed(b.v, a.adam_v + offset, P, d, lanes);
    }
}

template <class V>
void run_training(const TrainArgs& a, const int64_t* order, int64_t n_order) {
    if (n_order == 0 || a.n_probes == 0 || a.n_epochs == 0) return;
    const int lanes = padded_lanes(a.n_probes, V::W);
    int64_t max_ratings = 0;
    for (int64_t i = 0; i < n_order; ++i) {
        const int64_t n = a.data.indptr[order[i] + 1] - a.data.indptr[order[i]];
        max_ratings = n > max_ratings ? n : max_ratings;
    }
    const int threads = static_cast<int>(n_order < a.num_threads ? n_order : a.num_threads);
    const size_t per_thread = UserBuffers::layout(nullptr, nullptr, a.head, lanes, max_ratings);
    Scratch scratch(per_thread * threads);
#pragma omp parallel num_threads(threads)
    {
        UserBuffers b;
        UserBuffers::layout(&b, scratch.data() + per_thread * omp_get_thread_num(), a.head, lanes, max_ratings);
        for (int v = 0; v < lanes; ++v) {
            b.lr[v] = v < a.n_probes ? a.lrs[v] : 0.0f;
            b.reg2[v] = v < a.n_probes ? 2.0f * a.regs[v] : 0.0f;
        }
        // Users come heaviest first, so the dynamic schedule ends with small users.
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n_order; ++i) train_user<V>(a, order[i], b, lanes);
    }
}

// --------------------------------------------------------------------------- validation

// Adds sum over the user's ratings of w (pred - r)^2 to b.loss (per lane, in double).
template <class V>
void validate_user(const ValidationArgs& a, int64_t user, UserBuffers& b, int lanes) {
    using R = typename V::reg;
    const HeadView& head = a.head;
    const int P = a.n_probes;
    const int64_t start = a.data.indptr[user];
    const int64_t n = a.data.indptr[user + 1] - start;
    load_transposed(a.emb + static_cast<ptrdiff_t>(user) * P * head.d, b.e, P, head.d, lanes);
    const float* features = tower_forward<V>(head.tower, b.e, lanes, b.act);
    for (int64_t t0 = 0; t0 < n; t0 += kTile) {
        const int count = static_cast<int>(n - t0 < kTile ? n - t0 : kTile);
        gather(head, a.data, count, [&](int k) { return start + t0 + k; }, b, 1.0f);
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

template <class V>
void run_validation(const ValidationArgs& a) {
    const int P = a.n_probes;
    for (int p = 0; p < P; ++p) a.loss[p] = 0.0;
    const int64_t n_users = a.data.n_users;
    if (n_users == 0 || P == 0) return;
    const int lanes = padded_lanes(P, V::W);
    const int64_t n_blocks = (n_users + kValidationUsers - 1) / kValidationUsers;
    const int threads = static_cast<int>(n_blocks < a.num_threads ? n_blocks : a.num_threads);
    const size_t per_thread = UserBuffers::layout(nullptr, nullptr, a.head, lanes, 0);
    Scratch scratch(per_thread * threads + Scratch::round(sizeof(double) * n_blocks * P));
    double* block_sums = reinterpret_cast<double*>(scratch.data() + per_thread * threads);  // [n_blocks][P]
#pragma omp parallel num_threads(threads)
    {
        UserBuffers b;
        UserBuffers::layout(&b, scratch.data() + per_thread * omp_get_thread_num(), a.head, lanes, 0);
#pragma omp for schedule(dynamic, 1)
        for (int64_t block = 0; block < n_blocks; ++block) {
            for (int v = 0; v < lanes; ++v) b.loss[v] = 0.0;
            const int64_t last = (block + 1) * kValidationUsers < n_users ? (block + 1) * kValidationUsers : n_users;
            for (int64_t u = block * kValidationUsers; u < last; ++u)
                if (a.data.indptr[u + 1] > a.data.indptr[u]) validate_user<V>(a, u, b, lanes);
            for (int p = 0; p < P; ++p) block_sums[block * P + p] = b.loss[p];
        }
    }
    // Blocks are fixed and summed in order: the result does not depend on the thread count.
    for (int64_t block = 0; block < n_blocks; ++block)
        for (int p = 0; p < P; ++p) a.loss[p] += block_sums[block * P + p];
}

}  // namespace
}  // namespace retrain
