#include "state.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace retrain {
namespace {

// Rows below this move on one thread: a parallel region costs more than they take.
constexpr int64_t kParallelRows = int64_t{1} << 14;
constexpr int64_t kMemmoveFloats = 8;  // shorter runs are copied in a loop

struct Run {  // slots[first, first + length) are consecutive: one memmove per row
    int64_t first, slot, length;
};

void keep_row(float* state, int64_t row, int64_t n_probes, int64_t n_keep, const std::vector<Run>& runs) {
    const float* from = state + row * n_probes;
    float* to = state + row * n_keep;
    // Each run's destination starts at or below its source and below every later run's source
    // (first <= slot, and slots increase): moved in order, nothing is overwritten before it is read.
    for (const Run& r : runs) {
        if (r.length >= kMemmoveFloats) {
            std::memmove(to + r.first, from + r.slot, sizeof(float) * r.length);
        } else {  // forward, one float at a time: a call costs more than a few floats
            for (int64_t j = 0; j < r.length; ++j) to[r.first + j] = from[r.slot + j];
        }
    }
}

}  // namespace

void keep_probes(float* state, int64_t rows, int64_t n_probes, const int64_t* slots, int64_t n_keep,
                 int num_threads) {
    if (n_keep == 0) return;
    std::vector<Run> runs;
    for (int64_t j = 0; j < n_keep; ++j) {
        if (!runs.empty() && slots[j] == runs.back().slot + runs.back().length) ++runs.back().length;
        else runs.push_back({j, slots[j], 1});
    }
    // Rows move in increasing order, so every row reads its values before a later row's writes
    // reach them (row r writes below (r + 1) * n_keep <= (r + 1) * n_probes).  A block of rows
    // [a, b) may move in parallel when all its writes lie below all its reads, b * n_keep <=
    // a * n_probes: the blocks grow with a, one at a time in order.
    for (int64_t a = 0; a < rows;) {
        const int64_t b = std::min(rows, std::max(a + 1, a * n_probes / n_keep));
        if (b - a >= kParallelRows) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
            for (int64_t row = a; row < b; ++row) keep_row(state, row, n_probes, n_keep, runs);
        } else {
            for (int64_t row = a; row < b; ++row) keep_row(state, row, n_probes, n_keep, runs);
        }
        a = b;
    }
}

}  // namespace retrain
