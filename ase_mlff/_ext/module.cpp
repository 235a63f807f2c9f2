// Python bindings of the compiled core. Arrays are handed to numpy without copies.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <utility>
#include <vector>

#include "neighbors.hpp"
#include "pool.hpp"

namespace py = pybind11;

void register_mff(pybind11::module_& m);
void register_mff_core(pybind11::module_& m);
void register_cfconv(pybind11::module_& m);
void register_soap(pybind11::module_& m);
void register_bpnn(pybind11::module_& m);
void register_schnet(pybind11::module_& m);
void register_gap(pybind11::module_& m);

namespace {

template <typename T, typename Alloc>
py::array_t<T> to_numpy(std::vector<T, Alloc>&& v, std::vector<py::ssize_t> shape) {
    using Vec = std::vector<T, Alloc>;
    auto* heap = new Vec(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<Vec*>(p); });
    return py::array_t<T>(shape, heap->data(), owner);
}

py::tuple pack(mlff::PairList&& pl) {
    const py::ssize_t n = static_cast<py::ssize_t>(pl.first.size());
    return py::make_tuple(to_numpy(std::move(pl.first), {n}), to_numpy(std::move(pl.second), {n}),
                          to_numpy(std::move(pl.shifts), {n, 3}),
                          to_numpy(std::move(pl.vectors), {n, 3}),
                          to_numpy(std::move(pl.distances), {n}));
}

using CArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

void check_shape(const py::array& a, py::ssize_t rows, py::ssize_t cols, const char* name) {
    if (a.ndim() != 2 || (rows >= 0 && a.shape(0) != rows) || a.shape(1) != cols)
        throw std::invalid_argument(std::string(name) + " has the wrong shape");
}

py::tuple neighbor_list_py(CArray positions, CArray cell, py::array_t<bool> pbc, double cutoff,
                           bool self_interaction, int n_threads) {
    check_shape(positions, -1, 3, "positions (expected N x 3)");
    check_shape(cell, 3, 3, "cell (expected 3 x 3)");
    if (pbc.size() != 3) throw std::invalid_argument("pbc must have 3 entries");
    bool flags[3] = {pbc.at(0), pbc.at(1), pbc.at(2)};
    const double* pos = positions.data();
    const double* c = cell.data();
    const int64_t n = positions.shape(0);
    // The search runs without the GIL (other Python threads go on) and takes it back every
    // ~10 ms only to look for Ctrl-C: PyErr_CheckSignals runs the Python signal handlers
    // and, when one raised (KeyboardInterrupt), leaves that exception set for us to rethrow.
    // Only this thread runs the check, also when the search runs on the thread pool.
    const mlff::InterruptCheck ctrl_c = [] {
        py::gil_scoped_acquire gil;
        return PyErr_CheckSignals() != 0;
    };
    mlff::PairList pl;
    try {
        py::gil_scoped_release release;
        pl = mlff::neighbor_list(pos, n, c, flags, cutoff, self_interaction, ctrl_c, {}, n_threads);
    } catch (const mlff::Interrupted&) {
        throw py::error_already_set();  // the GIL is held again here: `release` is gone
    }
    return pack(std::move(pl));
}

py::tuple filter_pairs_py(CArray positions, CArray cell,
                          py::array_t<int64_t, py::array::c_style | py::array::forcecast> first,
                          py::array_t<int64_t, py::array::c_style | py::array::forcecast> second,
                          py::array_t<int32_t, py::array::c_style | py::array::forcecast> shifts,
                          double cutoff) {
    check_shape(positions, -1, 3, "positions (expected N x 3)");
    check_shape(cell, 3, 3, "cell (expected 3 x 3)");
    const py::ssize_t np_ = first.size();
    if (second.size() != np_ || shifts.size() != 3 * np_)
        throw std::invalid_argument("pair arrays have inconsistent lengths");
    mlff::PairList pl;
    const double* pos = positions.data();
    const double* c = cell.data();
    const int64_t n = positions.shape(0);
    const int64_t* f = first.data();
    const int64_t* s = second.data();
    const int32_t* sh = shifts.data();
    {
        py::gil_scoped_release release;
        pl = mlff::filter_pairs(pos, n, c, f, s, sh, np_, cutoff);
    }
    return pack(std::move(pl));
}

py::tuple closest_pair_py(CArray positions, CArray cell,
                          py::array_t<int64_t, py::array::c_style | py::array::forcecast> first,
                          py::array_t<int64_t, py::array::c_style | py::array::forcecast> second,
                          py::array_t<int32_t, py::array::c_style | py::array::forcecast> shifts) {
    check_shape(positions, -1, 3, "positions (expected N x 3)");
    check_shape(cell, 3, 3, "cell (expected 3 x 3)");
    const py::ssize_t np_ = first.size();
    if (second.size() != np_ || shifts.size() != 3 * np_)
        throw std::invalid_argument("pair arrays have inconsistent lengths");
    std::pair<double, int64_t> r;
    {
        py::gil_scoped_release release;
        r = mlff::closest_pair(positions.data(), positions.shape(0), cell.data(), first.data(),
                               second.data(), shifts.data(), np_);
    }
    return py::make_tuple(r.first, r.second);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "ase-mlff compiled core: neighbour lists, tabulated-potential kernels and their thread pool.";
    m.def("neighbor_list", &neighbor_list_py, py::arg("positions"), py::arg("cell"), py::arg("pbc"),
          py::arg("cutoff"), py::arg("self_interaction") = false, py::arg("n_threads") = 0,
          "Full neighbour list (i, j, shifts, vectors, distances) with |r_j - r_i + S.cell| < cutoff. "
          "Large searches run on n_threads threads (0: the configured count); the list does not "
          "depend on the count.");
    m.def("filter_pairs", &filter_pairs_py, py::arg("positions"), py::arg("cell"), py::arg("first"),
          py::arg("second"), py::arg("shifts"), py::arg("cutoff"),
          "Recompute vectors of an existing pair list and keep pairs closer than cutoff.");
    m.def("closest_pair", &closest_pair_py, py::arg("positions"), py::arg("cell"), py::arg("first"),
          py::arg("second"), py::arg("shifts"),
          "(squared distance, index) of the closest pair of an existing pair list for new positions "
          "and cell ((inf, -1) for none); writes no list.");
    const mlff::SearchLimits limits;
    m.attr("NEIGHBOR_MAX_IMAGES") = limits.max_images;
    m.attr("NEIGHBOR_MAX_PAIRS") = limits.max_pairs;
    m.attr("NEIGHBOR_MAX_CANDIDATES") = limits.max_candidates;
    // threads of the multithreaded kernels (mff_compute, gp_gram); Python: ase_mlff.threads
    m.def("set_num_threads", &mlff::set_num_threads, py::arg("n"), py::call_guard<py::gil_scoped_release>(),
          "Thread count of the kernels called with n_threads=0 (1 <= n <= MAX_THREADS); stops "
          "surplus pool workers (waits for a running kernel call to finish).");
    m.def("get_num_threads", &mlff::num_threads, "Thread count of the kernels called with n_threads=0.");
    m.def("last_threads_used", &mlff::last_threads_used,
          "Threads (the caller included) the last multithreaded kernel called from this thread ran on.");
    m.def("pool_workers_created", &mlff::workers_created,
          "Worker threads the pool has started in this process (constant while it is reused).");
    m.def("pool_size", &mlff::pool_size, "Worker threads alive in the pool now.");
    m.attr("MAX_THREADS") = mlff::kMaxThreads;
    register_mff(m);
    register_mff_core(m);
    register_cfconv(m);
    register_soap(m);
    register_bpnn(m);
    register_schnet(m);
    register_gap(m);
}
