// Dispatch to the instruction set's kernels.
#include "fused.h"

#include <stdexcept>

namespace retrain {

#if defined(__x86_64__) || defined(_M_X64)
bool simd_supported(Simd simd) {
    switch (simd) {
        case Simd::kPortable: return true;
        case Simd::kSse4: return __builtin_cpu_supports("sse4.2");
        case Simd::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        case Simd::kAvx512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    }
    return false;
}

Simd best_simd(int n_probes) {
    if (simd_supported(Simd::kAvx512) && (n_probes > 8 || !simd_supported(Simd::kAvx2))) return Simd::kAvx512;
    for (Simd s : {Simd::kAvx2, Simd::kSse4})
        if (simd_supported(s)) return s;
    return Simd::kPortable;
}

void train_epochs(const TrainArgs& args, Simd simd) {
    switch (simd) {
        case Simd::kAvx512: return train_epochs_avx512(args);
        case Simd::kAvx2: return train_epochs_avx2(args);
        case Simd::kSse4: return train_epochs_sse4(args);
        case Simd::kPortable: return train_epochs_portable(args);
    }
    throw std::invalid_argument("simd: unknown instruction set");
}

void validation_loss(const ValidationArgs& args, Simd simd) {
    switch (simd) {
        case Simd::kAvx512: return validation_loss_avx512(args);
        case Simd::kAvx2: return validation_loss_avx2(args);
        case Simd::kSse4: return validation_loss_sse4(args);
        case Simd::kPortable: return validation_loss_portable(args);
    }
    throw std::invalid_argument("simd: unknown instruction set");
}
#else  // other architectures: the portable kernel only
bool simd_supported(Simd simd) { return simd == Simd::kPortable; }

Simd best_simd(int) { return Simd::kPortable; }

void train_epochs(const TrainArgs& args, Simd) { train_epochs_portable(args); }

void validation_loss(const ValidationArgs& args, Simd) { validation_loss_portable(args); }
#endif

}  // namespace retrain
