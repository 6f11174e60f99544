// Dispatch to the instruction set's kernels, and the heaviest-first user order.
#include "fused.h"

#include <algorithm>
#include <vector>

namespace retrain {

bool simd_supported(Simd simd) {
    if (simd == Simd::kSse4) return __builtin_cpu_supports("sse4.2");
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

Simd best_simd() { return simd_supported(Simd::kAvx2) ? Simd::kAvx2 : Simd::kSse4; }

void train_epochs(const TrainArgs& args, Simd simd) {
    // Users with ratings, most ratings first: the dynamic schedule then balances the threads.
    std::vector<int64_t> order;
    order.reserve(static_cast<size_t>(args.data.n_users));
    for (int64_t u = 0; u < args.data.n_users; ++u)
        if (args.data.indptr[u + 1] > args.data.indptr[u]) order.push_back(u);
    const int64_t* indptr = args.data.indptr;
    std::stable_sort(order.begin(), order.end(), [indptr](int64_t a, int64_t b) {
        return indptr[a + 1] - indptr[a] > indptr[b + 1] - indptr[b];
    });
    const auto n = static_cast<int64_t>(order.size());
    if (simd == Simd::kAvx2)
        train_epochs_avx2(args, order.data(), n);
    else
        train_epochs_sse4(args, order.data(), n);
}

void validation_loss(const ValidationArgs& args, Simd simd) {
    if (simd == Simd::kAvx2)
        validation_loss_avx2(args);
    else
        validation_loss_sse4(args);
}

}  // namespace retrain
