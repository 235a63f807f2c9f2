// Continuous-filter convolution of SchNet with tabulated filters, for the torch-op paths
// (training and the serving path without the compiled core; the core itself is schnet_core.cpp).
//
//   m[i, :] = sum over pairs p with first[p] = i of  y[second[p], :] * W(r[p], :)
//
// W(r) is each block's filter network tabulated as cubic Hermite pieces: coeffs (G, 4, F) are
// the power-form coefficients of the G intervals of width h = 1 / inv_h on [0, r_c], so
// W(r) = c0 + t (c1 + t (c2 + t c3)) with u = r / h, k = min(floor(u), G - 1), t = u - k, and
// dW/dr = (c1 + t (2 c2 + 3 t c3)) / h. Beyond r_c the last node (W = 0, W' = 0) applies.
//
// The forward pass and the backward pass (gradients with respect to y and r; first derivatives
// only) each read every pair once, so no (pairs x features) tensor is ever materialised: the
// filter network, the gather of y[second] and the scatter to first become one loop.
//
// Threads (pool.hpp; n_threads 0 = the configured count) above kParallelPairs pairs. Forward:
// when the pairs are sorted by `first` (every list of ase-mlff is), the pairs are cut into
// contiguous chunks at changes of `first`, so each task writes its own rows of m. Backward:
// each task writes the d/dr of its own pairs and sums d/dy into its own buffer; the buffers are
// added in task order. The partition depends only on the thread count: results are
// deterministic for a given count.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "pool.hpp"
#include "schnet_core.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

template <typename T>
using carray = py::array_t<T, py::array::c_style>;

// below this many pairs one thread does the work (starting others costs more than it saves)
constexpr int64_t kParallelPairs = 20000;

struct Shapes {
    int64_t n_atoms, n_pairs, n_features, n_intervals;
};

template <typename T>
Shapes check(const carray<T>& y, const carray<T>& r, const carray<int64_t>& first, const carray<int64_t>& second,
             const carray<T>& coeffs) {
    if (y.ndim() != 2 || r.ndim() != 1 || first.ndim() != 1 || second.ndim() != 1 || coeffs.ndim() != 3)
        throw std::invalid_argument("cfconv: y (N, F), r (P,), first (P,), second (P,), coeffs (G, 4, F) expected");
    Shapes s{y.shape(0), r.shape(0), y.shape(1), coeffs.shape(0)};
    if (first.shape(0) != s.n_pairs || second.shape(0) != s.n_pairs)
        throw std::invalid_argument("cfconv: first/second must have one entry per distance");
    if (coeffs.shape(1) != 4 || coeffs.shape(2) != s.n_features || s.n_intervals < 1)
        throw std::invalid_argument("cfconv: coeffs must have shape (G, 4, F) with the features of y");
    const int64_t* a = first.data();
    const int64_t* b = second.data();
    for (int64_t p = 0; p < s.n_pairs; ++p)
        if (a[p] < 0 || a[p] >= s.n_atoms || b[p] < 0 || b[p] >= s.n_atoms)
            throw std::out_of_range("cfconv: pair " + std::to_string(p) + " refers to an atom out of range");
    return s;
}

// The inputs of both passes, checked, as raw pointers (valid while the arrays live).
template <typename T>
struct Problem {
    Shapes s;
    const T *Y, *R, *C;
    const int64_t *I, *J;
    T inv_h;
    int threads;

    Problem(const carray<T>& y, const carray<T>& r, const carray<int64_t>& first, const carray<int64_t>& second,
            const carray<T>& coeffs, double inv_h_, int n_threads)
        : s(check(y, r, first, second, coeffs)), Y(y.data()), R(r.data()), C(coeffs.data()), I(first.data()),
          J(second.data()), inv_h(static_cast<T>(inv_h_)),
          threads(s.n_pairs >= kParallelPairs ? mlff::resolve_threads(n_threads) : 1) {}

    // the four coefficient rows of pair p's interval and its local coordinate t in [0, 1]
    // (the arithmetic the serving core uses too: schnet_core.hpp)
    mlff::schnet::Piece<T> piece(int64_t p) const {
        return mlff::schnet::filter_piece(C, s.n_intervals, s.n_features, inv_h, R[p]);
    }
};

template <typename T>
carray<T> forward(const carray<T>& y, const carray<T>& r, const carray<int64_t>& first,
                  const carray<int64_t>& second, const carray<T>& coeffs, double inv_h, int n_threads) {
    const Problem<T> pr(y, r, first, second, coeffs, inv_h, n_threads);
    const int64_t F = pr.s.n_features, n_pairs = pr.s.n_pairs;
    const int threads = pr.threads;
    carray<T> out({pr.s.n_atoms, F});
    T* m = out.mutable_data();
    {
        py::gil_scoped_release release;
        std::fill(m, m + pr.s.n_atoms * F, T(0));
        auto run = [&](int64_t lo, int64_t hi) {
            for (int64_t p = lo; p < hi; ++p) {
                const auto q = pr.piece(p);
                const T t = q.t;
                const T* __restrict__ c0 = q.c0;
                const T* __restrict__ c1 = q.c1;
                const T* __restrict__ c2 = q.c2;
                const T* __restrict__ c3 = q.c3;
                const T* __restrict__ yj = pr.Y + pr.J[p] * F;
                T* __restrict__ mi = m + pr.I[p] * F;
#pragma omp simd
                for (int64_t f = 0; f < F; ++f) mi[f] += yj[f] * (c0[f] + t * (c1[f] + t * (c2[f] + t * c3[f])));
            }
        };
        bool sorted = threads > 1;
        for (int64_t p = 1; sorted && p < n_pairs; ++p) sorted = pr.I[p] >= pr.I[p - 1];
        if (!sorted) {
            run(0, n_pairs);
        } else {
            // chunk boundaries moved forward to the next change of `first`
            std::vector<int64_t> cut(threads + 1, n_pairs);
            cut[0] = 0;
            for (int k = 1; k < threads; ++k) {
                int64_t c = std::max(cut[k - 1], n_pairs * k / threads);
                while (c > 0 && c < n_pairs && pr.I[c] == pr.I[c - 1]) ++c;
                cut[k] = c;
            }
            mlff::parallel_for(threads, threads, [&](int64_t k) { run(cut[k], cut[k + 1]); });
        }
    }
    return out;
}

template <typename T>
py::tuple backward(const carray<T>& grad_m, const carray<T>& y, const carray<T>& r, const carray<int64_t>& first,
                   const carray<int64_t>& second, const carray<T>& coeffs, double inv_h, int n_threads) {
    const Problem<T> pr(y, r, first, second, coeffs, inv_h, n_threads);
    const int64_t F = pr.s.n_features, n_atoms = pr.s.n_atoms, n_pairs = pr.s.n_pairs;
    const int threads = pr.threads;
    if (grad_m.ndim() != 2 || grad_m.shape(0) != n_atoms || grad_m.shape(1) != F)
        throw std::invalid_argument("cfconv: the gradient must have the shape of the output (N, F)");
    carray<T> gy_arr({n_atoms, F});
    carray<T> gr_arr({n_pairs});
    T* gy = gy_arr.mutable_data();
    T* gr = gr_arr.mutable_data();
    const T* GM = grad_m.data();
    {
        py::gil_scoped_release release;
        std::vector<T> extra(static_cast<size_t>(threads - 1) * n_atoms * F, T(0));
        std::fill(gy, gy + n_atoms * F, T(0));
        auto run = [&](int64_t task) {
            T* buffer = task == 0 ? gy : extra.data() + (task - 1) * n_atoms * F;
            const int64_t lo = n_pairs * task / threads, hi = n_pairs * (task + 1) / threads;
            for (int64_t p = lo; p < hi; ++p) {
                const auto q = pr.piece(p);
                const T t = q.t;
                const T* __restrict__ c0 = q.c0;
                const T* __restrict__ c1 = q.c1;
                const T* __restrict__ c2 = q.c2;
                const T* __restrict__ c3 = q.c3;
                const T* __restrict__ gi = GM + pr.I[p] * F;
                const T* __restrict__ yj = pr.Y + pr.J[p] * F;
                T* __restrict__ gyj = buffer + pr.J[p] * F;
                T acc = 0;
#pragma omp simd reduction(+ : acc)
                for (int64_t f = 0; f < F; ++f) {
                    const T w = c0[f] + t * (c1[f] + t * (c2[f] + t * c3[f]));
                    const T dw = c1[f] + t * (T(2) * c2[f] + T(3) * t * c3[f]);
                    gyj[f] += gi[f] * w;
                    acc += gi[f] * yj[f] * dw;
                }
                gr[p] = acc * pr.inv_h;
            }
        };
        mlff::parallel_for(threads, threads, run);
        for (int k = 1; k < threads; ++k) {
            const T* b = extra.data() + (k - 1) * n_atoms * F;
            for (int64_t x = 0; x < n_atoms * F; ++x) gy[x] += b[x];
        }
    }
    return py::make_tuple(gy_arr, gr_arr);
}

}  // namespace

void register_cfconv(py::module_& m) {
    m.def("cfconv_forward", &forward<float>, py::arg("y"), py::arg("r"), py::arg("first"), py::arg("second"),
          py::arg("coeffs"), py::arg("inv_h"), py::arg("n_threads") = 0,
          "SchNet continuous-filter convolution with a cubic Hermite filter table (float32).");
    m.def("cfconv_forward", &forward<double>, py::arg("y"), py::arg("r"), py::arg("first"), py::arg("second"),
          py::arg("coeffs"), py::arg("inv_h"), py::arg("n_threads") = 0, "float64 version.");
    m.def("cfconv_backward", &backward<float>, py::arg("grad_m"), py::arg("y"), py::arg("r"), py::arg("first"),
          py::arg("second"), py::arg("coeffs"), py::arg("inv_h"), py::arg("n_threads") = 0,
          "Gradients (d/dy, d/dr) of cfconv_forward (float32).");
    m.def("cfconv_backward", &backward<double>, py::arg("grad_m"), py::arg("y"), py::arg("r"), py::arg("first"),
          py::arg("second"), py::arg("coeffs"), py::arg("inv_h"), py::arg("n_threads") = 0, "float64 version.");
}
