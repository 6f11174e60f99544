// The fused kernels in plain C++ floats, one probe per "register": compiled on every architecture,
// the fallback where no vector instruction set below has a kernel (and a check of the others).
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "fused_kernels.h"

namespace retrain {
namespace {

struct VecPortable {
    static constexpr int W = 1;
    static constexpr int kAccumulators = 12;
    using reg = float;
    static reg load(const float* p) { return *p; }
    static void store(float* p, reg x) { *p = x; }
    static reg set1(float x) { return x; }
    static reg zero() { return 0.0f; }
    static reg add(reg a, reg b) { return a + b; }
    static reg sub(reg a, reg b) { return a - b; }
    static reg mul(reg a, reg b) { return a * b; }
    static reg div(reg a, reg b) { return a / b; }
    static reg sqrt(reg a) { return std::sqrt(a); }
    static reg fmadd(reg a, reg b, reg c) { return a * b + c; }
    // maxps(0, x) exactly: NaN stays NaN, like torch.relu.
    static reg relu(reg x) { return 0.0f > x ? 0.0f : x; }
    static reg where_positive(reg g, reg y) { return y > 0.0f ? g : 0.0f; }
    static void add_to_double(double* acc, reg x) { *acc += static_cast<double>(x); }
    static reg blend(const int32_t* live, reg a, reg b) { return live[0] ? a : b; }
    static void transpose_block(const float* src, ptrdiff_t, float* dst, ptrdiff_t) { *dst = *src; }
    static constexpr int kRowColumns = 1;
    static void transpose_rows(const float* const* rows, ptrdiff_t col, float* dst) { *dst = rows[0][col]; }
};

}  // namespace

void train_epochs_portable(const TrainArgs& args) { run_training<VecPortable>(args); }

void validation_loss_portable(const ValidationArgs& args) { run_validation<VecPortable>(args); }

}  // namespace retrain
