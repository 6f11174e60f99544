// Python bindings of retrain._C: the contract functions (for tests) and the fused CPU routines.
//
// Every argument is checked here, before any work (arrays are used in place, never converted, so
// the caller's arguments keep them alive), and a bad one raises ValueError naming it
// (pybind11 turns std::invalid_argument into ValueError).  The kernels then run on raw pointers
// with the GIL released; they touch no Python object.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "contract.h"
#include "fused.h"
#include "state.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace py = pybind11;

namespace retrain {
namespace {

// Checks read `if (bad) fail(message)`: a message is only built when a check fails.
[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

std::string shape_text(const std::vector<py::ssize_t>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

std::string shape_of(const py::array& a) { return shape_text({a.shape(), a.shape() + a.ndim()}); }

// `obj` as a C-contiguous numpy array of T with `ndim` dimensions, else ValueError naming `name`.
template <class T>
py::array array_arg(const py::handle& obj, const std::string& name, py::ssize_t ndim, bool writeable = false) {
    if (!py::isinstance<py::array>(obj))
        fail(name + " must be a numpy array (tensor.numpy()), got " + std::string(py::str(py::type::of(obj))));
    auto a = py::reinterpret_borrow<py::array>(obj);
    const py::dtype want = py::dtype::of<T>();
    if (!a.dtype().is(want))
        fail(name + " must have dtype " + std::string(py::str(want)) + ", got " + std::string(py::str(a.dtype())));
    if (a.ndim() != ndim) fail(name + " must have " + std::to_string(ndim) + " dimensions, got shape " + shape_of(a));
    if ((a.flags() & py::array::c_style) == 0) fail(name + " must be C-contiguous");
    if (writeable && !a.writeable()) fail(name + " must be writeable (it is updated in place)");
    return a;
}

template <class T>
const T* ptr(const py::array& a) { return static_cast<const T*>(a.data()); }

void require_shape(const py::array& a, const std::string& name, const std::vector<py::ssize_t>& shape) {
    bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
    for (size_t i = 0; same && i < shape.size(); ++i) same = a.shape(i) == shape[i];
    if (!same) fail(name + " must have shape " + shape_text(shape) + ", got " + shape_of(a));
}

// Buffers the call writes must not overlap another argument it reads or writes (an alias of
// emb as adam_m, or init inside emb, trained silently wrong numbers).
void require_disjoint(const py::array& a, const std::string& name_a, const py::array& b, const std::string& name_b) {
    const auto* a0 = static_cast<const char*>(a.data());
    const auto* b0 = static_cast<const char*>(b.data());
    if (a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes())
        fail(name_a + " and " + name_b + " share memory: pass separate arrays");
}

HeadView head_arg(const py::handle& item_vectors, const py::handle& item_bias, double global_bias,
                  const py::sequence& tower_weights, const py::sequence& tower_biases,
                  const py::sequence& tower_activations) {
    HeadView head;
    const auto Q = array_arg<float>(item_vectors, "item_vectors", 2);
    head.n_items = Q.shape(0);
    head.h = static_cast<int>(Q.shape(1));
    if (head.n_items < 1 || head.h < 1) fail("item_vectors must be [n_items >= 1, h >= 1], got " + shape_of(Q));
    const auto b = array_arg<float>(item_bias, "item_bias", 1);
    require_shape(b, "item_bias", {head.n_items});
    head.item_vectors = ptr<float>(Q);
    head.item_bias = ptr<float>(b);
    head.global_bias = static_cast<float>(global_bias);

    const auto n_layers = static_cast<int>(py::len(tower_weights));
    if (n_layers > kMaxLayers) fail("tower_weights: a tower has at most 2 layers, got " + std::to_string(n_layers));
    if (py::len(tower_biases) != static_cast<size_t>(n_layers) ||
        py::len(tower_activations) != static_cast<size_t>(n_layers))
        fail("tower_weights, tower_biases and tower_activations must have the same length");
    TowerView& t = head.tower;
    t.n_layers = n_layers;
    for (int l = 0; l < n_layers; ++l) {
        const std::string at = "[" + std::to_string(l) + "]";
        const auto W = array_arg<float>(tower_weights[l], "tower_weights" + at, 2);
        const auto c = array_arg<float>(tower_biases[l], "tower_biases" + at, 1);
        t.out[l] = static_cast<int>(W.shape(0));
        t.in[l] = static_cast<int>(W.shape(1));
        if (t.out[l] < 1 || t.in[l] < 1) fail("tower_weights" + at + " must be [out >= 1, in >= 1], got " + shape_of(W));
        if (l > 0 && t.in[l] != t.out[l - 1])
            fail("tower_weights" + at + " takes " + std::to_string(t.in[l]) + " inputs but layer " +
                 std::to_string(l - 1) + " gives " + std::to_string(t.out[l - 1]));
        require_shape(c, "tower_biases" + at, {t.out[l]});
        const py::object code = tower_activations[l];
        int act = -1;
        try {
            act = code.cast<int>();
        } catch (const py::cast_error&) {  // not an int: reported below, naming the argument
        }
        if (act != kIdentity && act != kRelu && act != kTanh)
            fail("tower_activations" + at + " must be 0 (identity), 1 (relu) or 2 (tanh), got " +
                 std::string(py::repr(code)));
        t.weight[l] = ptr<float>(W);
        t.bias[l] = ptr<float>(c);
        t.act[l] = act;
    }
    if (n_layers > 0 && t.out[n_layers - 1] != head.h)
        fail("tower_weights: the tower gives " + std::to_string(t.out[n_layers - 1]) +
             " features but item_vectors have h = " + std::to_string(head.h));
    head.d = n_layers ? t.in[0] : head.h;
    return head;
}

// CSR ratings; checks indptr (starts at 0, non-decreasing, ends at nnz) and every item index.
// `prefix` goes before every argument name in a message ("val ": the validation arrays).
CsrView csr_arg(const py::handle& indptr, const py::handle& items, const py::handle& ratings,
                const py::handle& weights, const HeadView& head, const std::string& prefix = "") {
    CsrView data;
    const auto ip = array_arg<int64_t>(indptr, prefix + "indptr", 1);
    if (ip.shape(0) < 1) fail(prefix + "indptr must have n_users + 1 >= 1 entries");
    data.n_users = ip.shape(0) - 1;
    const auto it = array_arg<int32_t>(items, prefix + "items", 1);
    const py::ssize_t nnz = it.shape(0);
    const auto r = array_arg<float>(ratings, prefix + "ratings", 1);
    const auto w = array_arg<float>(weights, prefix + "weights", 1);
    require_shape(r, prefix + "ratings", {nnz});
    require_shape(w, prefix + "weights", {nnz});
    data.indptr = ptr<int64_t>(ip);
    data.items = ptr<int32_t>(it);
    data.ratings = ptr<float>(r);
    data.weights = ptr<float>(w);
    if (data.indptr[0] != 0) fail(prefix + "indptr[0] must be 0, got " + std::to_string(data.indptr[0]));
    for (int64_t u = 0; u < data.n_users; ++u) {
        const int64_t n = data.indptr[u + 1] - data.indptr[u];
        if (n < 0)
            fail(prefix + "indptr must be non-decreasing: indptr[" + std::to_string(u + 1) + "] < indptr[" +
                 std::to_string(u) + "]");
        if (n >= (int64_t{1} << 31))
            fail(prefix + "indptr: user " + std::to_string(u) + " has more than 2**31 - 1 ratings");
    }
    if (data.indptr[data.n_users] != nnz)
        fail(prefix + "indptr[-1] must equal len(items) = " + std::to_string(nnz) + ", got " +
             std::to_string(data.indptr[data.n_users]));
    for (py::ssize_t k = 0; k < nnz; ++k)
        if (data.items[k] < 0 || data.items[k] >= head.n_items)
            fail(prefix + "items: row " + std::to_string(k) + " has item " + std::to_string(data.items[k]) +
                 " outside [0, n_items = " + std::to_string(head.n_items) + ")");
    return data;
}

int threads_arg(int num_threads) {
    if (num_threads < 0) fail("num_threads must be >= 0 (0: OpenMP's default), got " + std::to_string(num_threads));
    return num_threads ? num_threads : omp_get_max_threads();
}

// The instruction sets by name, slowest first.
const std::pair<const char*, Simd> kSimdNames[] = {
    {"portable", Simd::kPortable}, {"sse4", Simd::kSse4}, {"avx2", Simd::kAvx2}, {"avx512", Simd::kAvx512}};

Simd simd_arg(const std::string& simd, int n_probes) {
    if (simd == "auto") return best_simd(n_probes);
    for (const auto& [name, s] : kSimdNames) {
        if (simd != name) continue;
        if (!simd_supported(s)) fail("simd: this CPU (or build) does not support '" + simd + "'");
        return s;
    }
    fail("simd must be 'auto', 'portable', 'sse4', 'avx2' or 'avx512', got '" + simd + "'");
}

OptimizerView optimizer_arg(const std::string& name, double beta1, double beta2, double eps) {
    OptimizerView opt;
    if (name != "adam" && name != "sgd") fail("optimizer must be 'adam' or 'sgd', got '" + name + "'");
    opt.adam = name == "adam";
    if (opt.adam && !(beta1 >= 0.0 && beta1 < 1.0 && beta2 >= 0.0 && beta2 < 1.0 && eps > 0.0 && std::isfinite(eps)))
        fail("Adam needs 0 <= beta1, beta2 < 1 and a finite eps > 0, got " + std::to_string(beta1) + ", " +
             std::to_string(beta2) + ", " + std::to_string(eps));
    opt.beta1 = beta1;
    opt.beta2 = beta2;
    opt.eps = eps;
    return opt;
}

// The users to visit: int64 indices in [0, n_users), each at most once (two threads must never
// own the same user).
const int64_t* order_arg(const py::handle& order, int64_t n_users, int64_t* n_order) {
    const auto o = array_arg<int64_t>(order, "order", 1);
    const int64_t* p = ptr<int64_t>(o);
    std::vector<uint8_t> seen(static_cast<size_t>(n_users), 0);
    for (py::ssize_t i = 0; i < o.shape(0); ++i) {
        if (p[i] < 0 || p[i] >= n_users)
            fail("order[" + std::to_string(i) + "] = " + std::to_string(p[i]) + " is outside [0, n_users = " +
                 std::to_string(n_users) + ")");
        if (seen[static_cast<size_t>(p[i])]++) fail("order lists user " + std::to_string(p[i]) + " twice");
    }
    *n_order = o.shape(0);
    return p;
}

// Epoch counts after which to check (and validate), from epoch_start: increasing, in [0, n_epochs],
// the last equal to n_epochs.  None: one checkpoint at the end.
std::vector<int64_t> checkpoint_ends_arg(const py::object& ends, int64_t n_epochs) {
    if (ends.is_none()) return {n_epochs};
    const auto e = array_arg<int64_t>(ends, "checkpoint_ends", 1);
    const int64_t* p = ptr<int64_t>(e);
    std::vector<int64_t> out(p, p + e.shape(0));
    if (out.empty() || out.back() != n_epochs)
        fail("checkpoint_ends must end with n_epochs = " + std::to_string(n_epochs));
    for (size_t k = 0; k < out.size(); ++k)
        if (out[k] < 0 || (k > 0 && out[k] <= out[k - 1]))
            fail("checkpoint_ends must be increasing and >= 0, got " + std::to_string(out[k]) + " at " +
                 std::to_string(k));
    return out;
}

// P of a state array: [n_users, P, d], or [n_users, d, P] with probes_last; else ValueError.
int state_probes(const py::array& a, const std::string& name, int64_t n_users, int d, bool probes_last) {
    const int probes = static_cast<int>(a.shape(probes_last ? 2 : 1));
    if (probes_last)
        require_shape(a, name + " (probes_last)", {n_users, d, probes});
    else
        require_shape(a, name, {n_users, probes, d});
    return probes;
}

py::tuple train_epochs_py(const py::handle& emb, const py::handle& adam_m, const py::handle& adam_v,
                          const py::handle& lrs, const py::handle& regs, const py::handle& indptr,
                          const py::handle& items, const py::handle& ratings, const py::handle& weights,
                          const py::handle& keys, const py::handle& order, const py::handle& item_vectors,
                          const py::handle& item_bias, double global_bias, const py::sequence& tower_weights,
                          const py::sequence& tower_biases, const py::sequence& tower_activations, int64_t epoch_start,
                          int64_t n_epochs, int64_t batch_size, const std::string& optimizer, double beta1,
                          double beta2, double eps, int64_t seed, const py::object& init,
                          const py::object& checkpoint_ends, const py::object& val, const py::object& snapshots,
                          int num_threads, const std::string& simd, bool users_in_lanes,
                          const py::object& user_damping, bool probes_last) {
    TrainArgs a;
    a.head = head_arg(item_vectors, item_bias, global_bias, tower_weights, tower_biases, tower_activations);
    a.data = csr_arg(indptr, items, ratings, weights, a.head);
    auto e = array_arg<float>(emb, "emb", 3, true);
    a.probes_last = probes_last;
    a.n_probes = state_probes(e, "emb", a.data.n_users, a.head.d, probes_last);
    a.emb = static_cast<float*>(e.mutable_data());
    // The arrays written in place, and init (read while emb is written): no two may overlap.
    std::vector<std::pair<py::array, std::string>> buffers = {{e, "emb"}};
    a.optimizer = optimizer_arg(optimizer, beta1, beta2, eps);
    if (a.optimizer.adam) {
        auto m = array_arg<float>(adam_m, "adam_m", 3, true);
        require_shape(m, "adam_m", {e.shape(0), e.shape(1), e.shape(2)});  // emb's layout
        a.adam_m = static_cast<float*>(m.mutable_data());
        auto v = array_arg<float>(adam_v, "adam_v", 3, true);
        require_shape(v, "adam_v", {e.shape(0), e.shape(1), e.shape(2)});
        a.adam_v = static_cast<float*>(v.mutable_data());
        buffers.insert(buffers.end(), {{m, "adam_m"}, {v, "adam_v"}});
    }
    if (!init.is_none()) {
        const auto i = array_arg<float>(init, "init", 2);
        require_shape(i, "init", {a.data.n_users, a.head.d});
        a.init = ptr<float>(i);
        buffers.emplace_back(i, "init");
    }
    const auto lr = array_arg<float>(lrs, "lrs", 1);
    require_shape(lr, "lrs", {a.n_probes});
    const auto reg = array_arg<float>(regs, "regs", 1);
    require_shape(reg, "regs", {a.n_probes});
    a.lrs = ptr<float>(lr);
    a.regs = ptr<float>(reg);
    if (!user_damping.is_none()) {
        const auto damping = array_arg<float>(user_damping, "user_damping", 1);
        require_shape(damping, "user_damping", {a.data.n_users});
        a.damping = ptr<float>(damping);
    }
    const auto k = array_arg<int64_t>(keys, "keys", 1);
    require_shape(k, "keys", {a.data.n_users});
    a.data.keys = ptr<int64_t>(k);
    a.order = order_arg(order, a.data.n_users, &a.n_order);
    if (epoch_start < 0) fail("epoch_start must be >= 0, got " + std::to_string(epoch_start));
    if (n_epochs < 0) fail("n_epochs must be >= 0, got " + std::to_string(n_epochs));
    // At most 2^62 (retrain.contract.MAX_BATCH_SIZE): a step count (n + batch_size - 1) / batch_size
    // near 2^63 overflows; any batch above a user's count is the same full batch.
    if (batch_size < 1 || batch_size > (int64_t{1} << 62))
        fail("batch_size must be in [1, 2^62], got " + std::to_string(batch_size));
    // A user's Adam step count reaches (epoch_start + n_epochs) * steps per epoch: at most 2^62
    // (retrain.contract.MAX_STEPS), so that it (and the bias-correction table's size) never
    // overflows int64.
    int64_t most = 0;
    for (int64_t u = 0; u < a.data.n_users; ++u) most = std::max(most, a.data.indptr[u + 1] - a.data.indptr[u]);
    const int64_t max_epochs = (int64_t{1} << 62) / std::max<int64_t>(1, (most + batch_size - 1) / batch_size);
    if (n_epochs > max_epochs || epoch_start > max_epochs - n_epochs)
        fail("epoch_start + n_epochs must be at most " + std::to_string(max_epochs) +
             " (2^62 Adam steps of a user with " + std::to_string(most) + " ratings), got " +
             std::to_string(epoch_start) + " + " + std::to_string(n_epochs));
    a.epoch_start = epoch_start;
    a.n_epochs = n_epochs;
    a.batch_size = batch_size;
    a.seed = static_cast<uint32_t>(seed);  // the contract uses seed mod 2**32
    a.num_threads = threads_arg(num_threads);
    a.users_in_lanes = users_in_lanes;
    const std::vector<int64_t> ends = checkpoint_ends_arg(checkpoint_ends, n_epochs);
    a.checkpoint_ends = ends.data();
    a.n_checkpoints = static_cast<int>(ends.size());
    const auto K = static_cast<py::ssize_t>(ends.size());
    if (!val.is_none()) {
        if (!py::isinstance<py::tuple>(val) || py::len(val) != 4)
            fail("val must be a tuple (indptr, items, ratings, weights) or None, got " +
                 std::string(py::str(py::type::of(val))));
        const auto parts = py::reinterpret_borrow<py::tuple>(val);
        a.val = csr_arg(parts[0], parts[1], parts[2], parts[3], a.head, "val ");
        if (a.val.n_users != a.data.n_users)
            fail("val has " + std::to_string(a.val.n_users) + " users, the ratings " + std::to_string(a.data.n_users));
    }
    if (!snapshots.is_none()) {
        auto snap = array_arg<float>(snapshots, "snapshots", 4, true);
        require_shape(snap, "snapshots", {K - 1, a.data.n_users, a.n_probes, a.head.d});
        a.snapshots = static_cast<float*>(snap.mutable_data());
        buffers.emplace_back(snap, "snapshots");
    }
    for (size_t i = 0; i < buffers.size(); ++i)
        for (size_t j = i + 1; j < buffers.size(); ++j)
            require_disjoint(buffers[i].first, buffers[i].second, buffers[j].first, buffers[j].second);
    const Simd s = simd_arg(simd, a.n_probes);
    py::array_t<uint8_t> finite({K, static_cast<py::ssize_t>(a.n_probes)});
    a.finite = finite.mutable_data();
    py::object limbs = py::none();
    if (a.val.indptr != nullptr) {
        py::array_t<int64_t> l({K, static_cast<py::ssize_t>(a.n_probes), static_cast<py::ssize_t>(kFixedLimbs)});
        a.val_limbs = l.mutable_data();
        limbs = l;
    }
    {
        py::gil_scoped_release release;
        train_epochs(a, s);
    }
    return py::make_tuple(finite, limbs);
}

py::tuple validation_loss_py(const py::handle& emb, const py::handle& indptr, const py::handle& items,
                             const py::handle& ratings, const py::handle& weights, const py::handle& item_vectors,
                             const py::handle& item_bias, double global_bias, const py::sequence& tower_weights,
                             const py::sequence& tower_biases, const py::sequence& tower_activations, int num_threads,
                             const std::string& simd, bool probes_last) {
    ValidationArgs a;
    a.head = head_arg(item_vectors, item_bias, global_bias, tower_weights, tower_biases, tower_activations);
    a.data = csr_arg(indptr, items, ratings, weights, a.head);
    const auto e = array_arg<float>(emb, "emb", 3);
    a.probes_last = probes_last;
    a.n_probes = state_probes(e, "emb", a.data.n_users, a.head.d, probes_last);
    a.emb = ptr<float>(e);
    a.num_threads = threads_arg(num_threads);
    const Simd s = simd_arg(simd, a.n_probes);
    py::array_t<int64_t> limbs({static_cast<py::ssize_t>(a.n_probes), static_cast<py::ssize_t>(kFixedLimbs)});
    py::array_t<uint8_t> finite(a.n_probes);
    a.limbs = limbs.mutable_data();
    a.finite = finite.mutable_data();
    {
        py::gil_scoped_release release;
        validation_loss(a, s);
    }
    return py::make_tuple(limbs, finite);
}

py::array_t<int64_t> permutation_py(int64_t seed, int64_t epoch, int64_t key, int64_t n) {
    if (n < 0 || n > 0xFFFFFFFFll) fail("n must be in [0, 2**32), got " + std::to_string(n));
    std::vector<uint32_t> order(static_cast<size_t>(n));
    Permutation(static_cast<uint32_t>(seed), static_cast<uint32_t>(epoch), static_cast<uint32_t>(key),
                static_cast<uint32_t>(n))
        .fill(order.data());
    py::array_t<int64_t> out(n);
    int64_t* o = out.mutable_data();
    for (int64_t i = 0; i < n; ++i) o[i] = order[static_cast<size_t>(i)];
    return out;
}

py::array_t<float> initial_embeddings_py(const py::handle& keys, int d, int64_t seed, double scale) {
    const auto k = array_arg<int64_t>(keys, "keys", 1);
    if (d < 0) fail("d must be >= 0, got " + std::to_string(d));
    const py::ssize_t n = k.shape(0);
    py::array_t<float> out({n, static_cast<py::ssize_t>(d)});
    float* o = out.mutable_data();
    const int64_t* key = ptr<int64_t>(k);
    for (py::ssize_t u = 0; u < n; ++u)
        for (int j = 0; j < d; ++j)
            o[u * d + j] = initial_value(static_cast<uint32_t>(seed), static_cast<uint32_t>(key[u]),
                                         static_cast<uint32_t>(j), static_cast<float>(scale));
    return out;
}

// Keeps probes `slots` of a probes-last state [U, d, P] in place (retrain.backends.cpu drops probes so).
void keep_probes_py(const py::handle& state, const py::handle& slots, int num_threads) {
    auto s = array_arg<float>(state, "state", 3, true);
    const auto k = array_arg<int64_t>(slots, "slots", 1);
    const int64_t n_probes = s.shape(2), n_keep = k.shape(0);
    const int64_t* keep = ptr<int64_t>(k);
    for (int64_t j = 0; j < n_keep; ++j)
        if (keep[j] < 0 || keep[j] >= n_probes || (j > 0 && keep[j] <= keep[j - 1]))
            fail("slots must be increasing probe slots in [0, " + std::to_string(n_probes) + "), got " +
                 std::to_string(keep[j]) + " at entry " + std::to_string(j));
    const int threads = threads_arg(num_threads);
    float* x = static_cast<float*>(s.mutable_data());
    py::gil_scoped_release release;
    keep_probes(x, s.shape(0) * s.shape(1), n_probes, keep, n_keep, threads);
}

// Asks Linux to back the 2 MiB-aligned interior of `array`'s memory with huge pages
// (MADV_HUGEPAGE, honoured where transparent huge pages are "always" or "madvise"); effective for
// pages not yet touched.  True when the kernel accepted it; false elsewhere or for a small array.
bool advise_huge_pages_py(const py::handle& array) {
    if (!py::isinstance<py::array>(array)) fail("array must be a numpy array");
    const auto a = py::reinterpret_borrow<py::array>(array);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr uintptr_t kHuge = uintptr_t{1} << 21;
    const auto start = reinterpret_cast<uintptr_t>(a.data());
    const uintptr_t begin = (start + kHuge - 1) / kHuge * kHuge, end = (start + a.nbytes()) / kHuge * kHuge;
    return end > begin && madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) == 0;
#else
    return false;
#endif
}

std::vector<std::string> simd_paths() {
    std::vector<std::string> names;
    for (const auto& [name, s] : kSimdNames)
        if (simd_supported(s)) names.emplace_back(name);
    return names;
}

}  // namespace
}  // namespace retrain

PYBIND11_MODULE(_C, m) {
    using namespace retrain;
    using namespace pybind11::literals;
    m.doc() = "retrain's fused CPU backend (see retrain/backends/cpu.py) and the contract in C++.";
    m.def("fmix32", &fmix32, "MurmurHash3's 32-bit finalizer.", "x"_a);
    m.def("combine", &combine, "fmix32(h ^ (v + GOLDEN)) mod 2**32.", "h"_a, "v"_a);
    m.def("permutation", &permutation_py,
          "Visiting order (int64 [n]) of a user's n ratings in an epoch (seed, epoch, key taken mod 2**32).",
          "seed"_a, "epoch"_a, "key"_a, "n"_a);
    m.def("initial_embeddings", &initial_embeddings_py, "Initial embeddings float32 [len(keys), d].", "keys"_a, "d"_a,
          "seed"_a, "scale"_a);
    m.def("simd_paths", &simd_paths, "Instruction sets with a kernel this build and CPU can run, slowest first "
          "('portable', 'sse4', 'avx2', 'avx512'); 'auto' picks AVX-512 for more than 8 probes, else the best "
          "of the others.");
    m.def("advise_huge_pages", &advise_huge_pages_py,
          "Ask the OS to back the array's memory (its 2 MiB-aligned interior, pages not yet touched) with "
          "huge pages; returns whether it accepted.  Changes no value.", "array"_a);
    m.def("keep_probes", &keep_probes_py,
          "Keep probes slots (int64 [K], increasing, in [0, P)) of a probes-last state float32 [U, d, P] in "
          "place: afterwards its first U * d * K floats are the [U, d, K] state of those probes.  num_threads "
          "0: OpenMP's default.", "state"_a, "slots"_a, py::kw_only(), "num_threads"_a = 0);
    m.def("train_epochs", &train_epochs_py,
          "Advance P probes by n_epochs epochs in place: emb, adam_m, adam_v float32 [U, P, d], or [U, d, P] "
          "with probes_last (moments ignored for sgd), lrs/regs float32 [P], CSR ratings (indptr int64, items int32, ratings/weights "
          "float32, keys int64), order int64 (the users to visit, heaviest first), the frozen head "
          "(item_vectors [I, h], item_bias [I], global_bias, tower lists; activations 0 identity, 1 relu, "
          "2 tanh), the step spec's optimizer and constants.  init float32 [U, d] or None: start every probe "
          "from it (moments from zero) instead of reading emb/adam_m/adam_v.  checkpoint_ends int64 [K] or "
          "None: check (and with val = (indptr, items, ratings, weights) of the same users, validate) after "
          "these many epochs, inside the call; snapshots float32 [K-1, U, P, d] or None receives the "
          "embeddings at each checkpoint but the last.  Returns (finite uint8 [K, P]: 0 for a probe whose "
          "state or loss became NaN/inf, limbs int64 [K, P, 6] with val else None).  num_threads 0: OpenMP's "
          "default.  users_in_lanes: with P at most half a register, several users share one (the same "
          "bits; False: one user per register).  user_damping float32 [U] or None (zeros): user u's L2 is "
          "regs[p] + user_damping[u] (retrain.contract.damping_terms).  probes_last: the state's layout "
          "(the same bits either way; snapshots are [K-1, U, P, d] in both).",
          "emb"_a, "adam_m"_a, "adam_v"_a, "lrs"_a, "regs"_a, "indptr"_a, "items"_a, "ratings"_a, "weights"_a,
          "keys"_a, "order"_a, "item_vectors"_a, "item_bias"_a, "global_bias"_a, "tower_weights"_a,
          "tower_biases"_a, "tower_activations"_a, py::kw_only(), "epoch_start"_a, "n_epochs"_a, "batch_size"_a,
          "optimizer"_a, "beta1"_a, "beta2"_a, "eps"_a, "seed"_a, "init"_a = py::none(),
          "checkpoint_ends"_a = py::none(), "val"_a = py::none(), "snapshots"_a = py::none(), "num_threads"_a = 0,
          "simd"_a = "auto", "users_in_lanes"_a = true, "user_damping"_a = py::none(), "probes_last"_a = false);
    m.def("validation_loss", &validation_loss_py,
          "Per-probe exact sums of w (pred - r)^2 over all ratings: (limbs int64 [P, 6] as "
          "retrain.contract.fixed_point_limbs, finite uint8 [P]); emb float32 [U, P, d], or [U, d, P] with "
          "probes_last.", "emb"_a,
          "indptr"_a, "items"_a, "ratings"_a, "weights"_a, "item_vectors"_a, "item_bias"_a, "global_bias"_a,
          "tower_weights"_a, "tower_biases"_a, "tower_activations"_a, py::kw_only(), "num_threads"_a = 0,
          "simd"_a = "auto", "probes_last"_a = false);
}
