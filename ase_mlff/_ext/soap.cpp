// Python bindings of the SOAP descriptor (soap_core.hpp has the definitions and the arithmetic):
// soap_forward, soap_backward, soap_backward_channels and spherical_harmonics. Each checks the
// shapes of the numpy arrays, builds the core's views over them and runs the pass without the
// GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "soap_core.hpp"

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace py = pybind11;

namespace {

using mlff::soap::Basis;
using mlff::soap::Pairs;

// float arrays without forcecast, so that the float32 and float64 overloads dispatch by dtype
template <typename T>
using carray = py::array_t<T, py::array::c_style>;
template <typename I>
using iarray = py::array_t<I, py::array::c_style | py::array::forcecast>;

// The checked views of one call: the basis over the tables, the pairs over the pair arrays.
template <typename T>
struct Views {
    Basis<T> basis;
    Pairs<T> pairs;
};

template <typename T>
Views<T> views(int64_t n_atoms, const iarray<int64_t>& first, const iarray<int32_t>& nbr, const iarray<int32_t>& centre,
               const carray<T>& vec, const carray<T>& table, const carray<T>& central, int n_species, int n_max,
               int l_max, double inv_h, double r_cut, int n_threads) {
    const int64_t n_pairs = first.size();
    if (l_max < 0 || l_max > mlff::soap::kMaxL) throw std::invalid_argument("soap: l_max must be from 0 to 20");
    if (n_max < 1 || n_species < 1) throw std::invalid_argument("soap: n_max and n_species must be positive");
    if (first.ndim() != 1 || nbr.ndim() != 1 || nbr.shape(0) != n_pairs)
        throw std::invalid_argument("soap: first and neighbour species must be (P,)");
    if (vec.ndim() != 2 || vec.shape(0) != n_pairs || vec.shape(1) != 3)
        throw std::invalid_argument("soap: vectors must be (P, 3)");
    if (centre.ndim() != 1 || centre.shape(0) != n_atoms) throw std::invalid_argument("soap: centre species must be (N,)");
    if (table.ndim() != 3 || table.shape(1) != 4 || table.shape(2) != int64_t(n_max) * (l_max + 1) || table.shape(0) < 1)
        throw std::invalid_argument("soap: table must be (G, 4, n_max * (l_max + 1))");
    if (central.ndim() != 1 || central.shape(0) != n_max) throw std::invalid_argument("soap: central must be (n_max,)");
    Basis<T> b(n_species, n_max, l_max, table.shape(0), inv_h, r_cut, table.data(), central.data());
    Pairs<T> p(b, n_atoms, n_pairs, first.data(), nbr.data(), centre.data(), vec.data(), n_threads);
    return {std::move(b), std::move(p)};
}

template <typename T>
py::tuple soap_forward(int64_t n_atoms, const iarray<int64_t>& first, const iarray<int32_t>& nbr,
                       const iarray<int32_t>& centre, const carray<T>& vectors, const carray<T>& table,
                       const carray<T>& central, int n_species, int n_max, int l_max, double inv_h, double r_cut,
                       bool jacobian, int n_threads) {
    const Views<T> v = views(n_atoms, first, nbr, centre, vectors, table, central, n_species, n_max, l_max, inv_h,
                             r_cut, n_threads);
    const int64_t D = v.basis.dim(), C = v.basis.n_coeffs();
    carray<T> p_arr({n_atoms, D});
    carray<T> c_arr({n_atoms, C});
    carray<T> j_arr(std::vector<py::ssize_t>{jacobian ? v.pairs.n_pairs : 0, 3, D});
    T* P = p_arr.mutable_data();
    T* Cout = c_arr.mutable_data();
    T* J = jacobian ? j_arr.mutable_data() : nullptr;
    {
        py::gil_scoped_release release;
        mlff::soap::forward(v.basis, v.pairs, P, Cout, J);
    }
    return py::make_tuple(p_arr, c_arr, j_arr);
}

// d(sum_ik grad_p[i, k] p[i, k]) / d(vectors): (P, 3), given the coefficients from the forward pass
template <typename T>
carray<T> soap_backward(const carray<T>& grad_p, const carray<T>& coeffs, const iarray<int64_t>& first,
                        const iarray<int32_t>& nbr, const iarray<int32_t>& centre, const carray<T>& vectors,
                        const carray<T>& table, const carray<T>& central, int n_species, int n_max, int l_max,
                        double inv_h, double r_cut, int n_threads) {
    const int64_t n_atoms = centre.size();
    const Views<T> v = views(n_atoms, first, nbr, centre, vectors, table, central, n_species, n_max, l_max, inv_h,
                             r_cut, n_threads);
    const int64_t D = v.basis.dim(), C = v.basis.n_coeffs();
    if (grad_p.ndim() != 2 || grad_p.shape(0) != n_atoms || grad_p.shape(1) != D)
        throw std::invalid_argument("soap: the gradient must have the shape of the power spectrum (N, D)");
    if (coeffs.ndim() != 2 || coeffs.shape(0) != n_atoms || coeffs.shape(1) != C)
        throw std::invalid_argument("soap: coefficients do not match (N, species * n_max * (l_max + 1)^2)");
    carray<T> out({v.pairs.n_pairs, int64_t(3)});
    T* G = out.mutable_data();
    {
        py::gil_scoped_release release;
        mlff::soap::backward(v.basis, v.pairs, grad_p.data(), coeffs.data(), G);
    }
    return out;
}

// R backward passes at once (GAP's posterior samples, ase_mlff/models/gap.py): see
// mlff::soap::backward_channels
carray<double> soap_backward_channels(const carray<double>& grad_p, const carray<double>& coeffs,
                                      const iarray<int64_t>& first, const iarray<int32_t>& nbr,
                                      const iarray<int32_t>& centre, const carray<double>& vectors,
                                      const carray<double>& table, const carray<double>& central, int n_species,
                                      int n_max, int l_max, double inv_h, double r_cut, int n_threads) {
    const int64_t n_atoms = centre.size();
    const Views<double> v = views(n_atoms, first, nbr, centre, vectors, table, central, n_species, n_max, l_max,
                                  inv_h, r_cut, n_threads);
    const int64_t D = v.basis.dim(), C = v.basis.n_coeffs();
    if (grad_p.ndim() != 3 || grad_p.shape(0) != n_atoms || grad_p.shape(1) != D || grad_p.shape(2) < 1)
        throw std::invalid_argument("soap: the gradients must be (N, D, channels) for a power spectrum (N, D)");
    if (coeffs.ndim() != 2 || coeffs.shape(0) != n_atoms || coeffs.shape(1) != C)
        throw std::invalid_argument("soap: coefficients do not match (N, species * n_max * (l_max + 1)^2)");
    const int64_t R = grad_p.shape(2);
    carray<double> out({v.pairs.n_pairs, int64_t(3), R});
    double* G = out.mutable_data();
    {
        py::gil_scoped_release release;
        mlff::soap::backward_channels(v.basis, v.pairs, grad_p.data(), coeffs.data(), R, G);
    }
    return out;
}

py::array_t<double> harmonics_py(const iarray<double>& u, int l_max) {
    if (u.ndim() != 2 || u.shape(1) != 3) throw std::invalid_argument("u must be (Q, 3) unit vectors");
    if (l_max < 0 || l_max > mlff::soap::kMaxL) throw std::invalid_argument("l_max must be from 0 to 20");
    mlff::soap::Harmonics h(l_max);
    const int64_t q = u.shape(0);
    py::array_t<double> out({q, int64_t(h.size())});
    for (int64_t k = 0; k < q; ++k) h.eval(u.data() + 3 * k, out.mutable_data() + k * h.size(), nullptr);
    return out;
}

}  // namespace

void register_soap(py::module_& m) {
    m.def("soap_forward", &soap_forward<double>, py::arg("n_atoms"), py::arg("first"), py::arg("neighbor_species"),
          py::arg("centre_species"), py::arg("vectors"), py::arg("table"), py::arg("central"), py::arg("n_species"),
          py::arg("n_max"), py::arg("l_max"), py::arg("inv_h"), py::arg("r_cut"), py::arg("jacobian") = false,
          py::arg("n_threads") = 0,
          "SOAP power spectrum (N, D), expansion coefficients (N, S*n_max*(l_max+1)^2) and, with jacobian=True, "
          "dp/d(pair vector) (P, 3, D); float64.");
    m.def("soap_forward", &soap_forward<float>, py::arg("n_atoms"), py::arg("first"), py::arg("neighbor_species"),
          py::arg("centre_species"), py::arg("vectors"), py::arg("table"), py::arg("central"), py::arg("n_species"),
          py::arg("n_max"), py::arg("l_max"), py::arg("inv_h"), py::arg("r_cut"), py::arg("jacobian") = false,
          py::arg("n_threads") = 0, "float32 version.");
    m.def("soap_backward", &soap_backward<double>, py::arg("grad_p"), py::arg("coeffs"), py::arg("first"),
          py::arg("neighbor_species"), py::arg("centre_species"), py::arg("vectors"), py::arg("table"),
          py::arg("central"), py::arg("n_species"), py::arg("n_max"), py::arg("l_max"), py::arg("inv_h"),
          py::arg("r_cut"), py::arg("n_threads") = 0, "Gradient (P, 3) of sum(grad_p * p) with respect to the pair vectors.");
    m.def("soap_backward", &soap_backward<float>, py::arg("grad_p"), py::arg("coeffs"), py::arg("first"),
          py::arg("neighbor_species"), py::arg("centre_species"), py::arg("vectors"), py::arg("table"),
          py::arg("central"), py::arg("n_species"), py::arg("n_max"), py::arg("l_max"), py::arg("inv_h"),
          py::arg("r_cut"), py::arg("n_threads") = 0, "float32 version.");
    m.def("soap_backward_channels", &soap_backward_channels, py::arg("grad_p"), py::arg("coeffs"), py::arg("first"),
          py::arg("neighbor_species"), py::arg("centre_species"), py::arg("vectors"), py::arg("table"),
          py::arg("central"), py::arg("n_species"), py::arg("n_max"), py::arg("l_max"), py::arg("inv_h"),
          py::arg("r_cut"), py::arg("n_threads") = 0,
          "Gradients (P, 3, R) of the R sums sum(grad_p[:, :, r] * p) (grad_p (N, D, R)) with respect to the pair "
          "vectors; float64.");
    m.def("spherical_harmonics", &harmonics_py, py::arg("u"), py::arg("l_max"),
          "Real orthonormal spherical harmonics (Q, (l_max+1)^2) of unit vectors (index l*l + l + m), for tests.");
}
