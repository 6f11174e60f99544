// Dispatch to the instruction set's kernels.
#include "fused.h"

namespace retrain {

bool simd_supported(Simd simd) {
    if (simd == Simd::kSse4) return __builtin_cpu_supports("sse4.2");
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

Simd best_simd() { return simd_supported(Simd::kAvx2) ? Simd::kAvx2 : Simd::kSse4; }

void train_epochs(const TrainArgs& args, Simd simd) {
    if (simd == Simd::kAvx2)
        train_epochs_avx2(args);
    else
        train_epochs_sse4(args);
}

void validation_loss(const ValidationArgs& args, Simd simd) {
    if (simd == Simd::kAvx2)
        validation_loss_avx2(args);
    else
        validation_loss_sse4(args);
}

}  // namespace retrain
