// Moves of the probe state that are not training: nothing here knows Python.
#pragma once

#include <cstdint>

namespace retrain {

// Keep probes `slots` (n_keep of them, increasing, in [0, n_probes)) of a probes-last state
// [rows, n_probes] (rows = U * d) in place: it becomes [rows, n_keep] at the start of the same
// memory, each row's kept values in slot order.
void keep_probes(float* state, int64_t rows, int64_t n_probes, const int64_t* slots, int64_t n_keep,
                 int num_threads);

}  // namespace retrain
