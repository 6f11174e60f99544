// The fused CPU training loop: plain views of already-checked buffers, and the entry points.
//
// Layouts: embeddings and Adam moments are user-major [U, P, d] float32 (one user's probes are
// contiguous); ratings are CSR by user (indptr int64 [U+1], items int32, ratings/weights float32).
// Nothing here knows Python: module.cpp checks the arguments and builds these views.
#pragma once

#include <cstdint>

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

struct TrainArgs {
    HeadView head;
    CsrView data;
    float* emb = nullptr;     // [U, P, d], updated in place
    float* adam_m = nullptr;  // [U, P, d] (Adam only)
    float* adam_v = nullptr;  // [U, P, d] (Adam only)
    const float* lrs = nullptr;   // [P]
    const float* regs = nullptr;  // [P]
    int n_probes = 0;
    int64_t epoch_start = 0;
    int64_t n_epochs = 0;
    int64_t batch_size = 1;
    bool adam = true;
    uint32_t seed = 0;
    int num_threads = 1;
};

struct ValidationArgs {
    HeadView head;
    CsrView data;
    const float* emb = nullptr;  // [U, P, d]
    int n_probes = 0;
    int num_threads = 1;
    double* loss = nullptr;  // [P] out: sum over ratings of w (pred - r)^2
};

// Instruction sets with a compiled kernel; `simd` below names one of them or is "auto".
enum class Simd { kSse4, kAvx2 };
bool simd_supported(Simd simd);
Simd best_simd();

// Advance every probe of every user with ratings by n_epochs epochs (the contract's schedule).
void train_epochs(const TrainArgs& args, Simd simd);
// Per-probe sums of w (pred - r)^2, combined in a fixed order (independent of the thread count).
void validation_loss(const ValidationArgs& args, Simd simd);

// One instantiation of the kernels per instruction set (fused_sse4.cpp, fused_avx2.cpp).
// `order` lists the users to train, heaviest first.
void train_epochs_sse4(const TrainArgs& args, const int64_t* order, int64_t n_order);
void train_epochs_avx2(const TrainArgs& args, const int64_t* order, int64_t n_order);
void validation_loss_sse4(const ValidationArgs& args);
void validation_loss_avx2(const ValidationArgs& args);

}  // namespace retrain
