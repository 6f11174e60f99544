// The fused CPU training loop: plain views of already-checked buffers, and the entry points.
//
// Layouts: embeddings and Adam moments are user-major float32, [U, P, d] (one user's probes are
// contiguous) or, with probes_last, [U, d, P] (the kernels' own lane order: a user trains in place
// or is moved by row copies, never transposed); ratings are CSR by user (indptr int64 [U+1], items
// int32, ratings/weights float32).
// Nothing here knows Python: module.cpp checks the arguments and builds these views.
#pragma once

#include <cstdint>

#include "contract.h"

namespace retrain {

enum Activation : int { kIdentity = 0, kRelu = 1, kTanh = 2 };
constexpr int kMaxLayers = 2;

// x -> act(W x + c) for each layer; W is [out, in] row-major.
struct TowerView {
    int n_layers = 0;
    const float* weight[kMaxLayers] = {nullptr, nullptr};
    const float* bias[kMaxLayers] = {nullptr, nullptr};
    int in[kMaxLayers] = {0, 0};
    int out[kMaxLayers] = {0, 0};
    int act[kMaxLayers] = {kIdentity, kIdentity};
};

// pred(e, i) = tower(e) . Q[i] + b[i] + mu.
struct HeadView {
    const float* item_vectors = nullptr;  // Q [n_items, h]
    const float* item_bias = nullptr;     // b [n_items]
    float global_bias = 0.0f;             // mu
    int64_t n_items = 0;
    int d = 0;
    int h = 0;
    TowerView tower;
};

struct CsrView {
    const int64_t* indptr = nullptr;  // [n_users + 1]
    const int32_t* items = nullptr;   // [nnz]
    const float* ratings = nullptr;   // [nnz]
    const float* weights = nullptr;   // [nnz]
    const int64_t* keys = nullptr;    // [n_users], user keys (only their low 32 bits are used)
    int64_t n_users = 0;
};

// The optimizer of the step spec (retrain.contract.StepSpec) with its constants.
struct OptimizerView {
    bool adam = true;
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // Adam only
};

struct TrainArgs {
    HeadView head;
    CsrView data;
    float* emb = nullptr;     // [U, P, d] ([U, d, P] with probes_last), updated in place
    float* adam_m = nullptr;  // like emb (Adam only)
    float* adam_v = nullptr;  // like emb (Adam only)
    bool probes_last = false;
    // [U, d] or null.  When set, every probe of every user starts from it (the moments from zero)
    // and emb / adam_m / adam_v are only written: a fresh probe batch needs no broadcast copy.
    const float* init = nullptr;
    const float* lrs = nullptr;   // [P]
    const float* regs = nullptr;  // [P]
    // [U] or null (zeros): user u's damping / n (retrain.contract.damping_terms); the L2 of probe p
    // on user u is regs[p] + damping[u] in float32.
    const float* damping = nullptr;
    const int64_t* order = nullptr;  // users to visit, each once, heaviest first
    int64_t n_order = 0;
    int n_probes = 0;
    int64_t epoch_start = 0;
    int64_t n_epochs = 0;
    int64_t batch_size = 1;
    OptimizerView optimizer;
    uint32_t seed = 0;
    int num_threads = 1;
    // Checkpoints inside the call: after checkpoint_ends[k] epochs (counted from epoch_start;
    // increasing, the last equals n_epochs) the state of every visited user is checked for NaN/inf
    // and, when val is set, validated on val (the same users) while it is in the thread's cache.
    const int64_t* checkpoint_ends = nullptr;
    int n_checkpoints = 0;
    CsrView val;                     // val.indptr == nullptr: no validation
    uint8_t* finite = nullptr;       // [n_checkpoints][P] out: 0 for a probe with a NaN/inf state or loss
    int64_t* val_limbs = nullptr;    // [n_checkpoints][P][kFixedLimbs] out (with val)
    // [n_checkpoints - 1][U][P][d] out or null (in either state layout): the embeddings at each
    // checkpoint but the last.
    float* snapshots = nullptr;
    // With P at most half a register, put several users in its lanes (bitwise the
    // same result; false: one user per register, for comparisons).
    bool users_in_lanes = true;
};

struct ValidationArgs {
    HeadView head;
    CsrView data;
    const float* emb = nullptr;  // [U, P, d] ([U, d, P] with probes_last)
    bool probes_last = false;
    int n_probes = 0;
    int num_threads = 1;
    int64_t* limbs = nullptr;  // [P][kFixedLimbs] out: exact sum over users of sum w (pred - r)^2
    uint8_t* finite = nullptr;  // [P] out: 0 where some user's sum was NaN/inf
};

// Instruction sets with a compiled kernel; `simd` below names one of them or is "auto".  The
// portable kernel is built everywhere, the others on x86-64 only.
enum class Simd { kPortable, kSse4, kAvx2, kAvx512 };
bool simd_supported(Simd simd);  // compiled here and this CPU (and OS) runs it
// The fastest path this CPU runs for n_probes probes: AVX-512 only when they fill more than AVX2's
// 8 lanes (with fewer, AVX2 wastes fewer lanes and packs users as well).  The two give the same
// bits, so the choice never changes a result.
Simd best_simd(int n_probes);

// Advance every probe of the users in args.order by n_epochs epochs (the contract's schedule).
void train_epochs(const TrainArgs& args, Simd simd);
// Per-probe exact sums of w (pred - r)^2 (independent of the thread count and the user order).
void validation_loss(const ValidationArgs& args, Simd simd);

// One instantiation of the kernels per instruction set (fused_<name>.cpp).
void train_epochs_portable(const TrainArgs& args);
void validation_loss_portable(const ValidationArgs& args);
#if defined(__x86_64__) || defined(_M_X64)
void train_epochs_sse4(const TrainArgs& args);
void train_epochs_avx2(const TrainArgs& args);
void train_epochs_avx512(const TrainArgs& args);
void validation_loss_sse4(const ValidationArgs& args);
void validation_loss_avx2(const ValidationArgs& args);
void validation_loss_avx512(const ValidationArgs& args);
#endif

}  // namespace retrain
