// Python binding of the Behler–Parrinello serving core (bpnn_core.hpp): arrays in, arrays out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "binding_py.hpp"

#include "bpnn_core.hpp"

#include <stdexcept>

namespace py = pybind11;

namespace {

using mlff::carray;
using mlff::darray;
using mlff::iarray;

template <typename T>
py::tuple compute(const iarray& ints, const carray<T>& reals, const darray& doubles, const iarray& species,
                  const iarray& first, const iarray& second, const carray<T>& vectors, int64_t n_energy_atoms,
                  bool want_forces, bool want_virial, int n_threads) {
    if (ints.ndim() != 1 || reals.ndim() != 1 || doubles.ndim() != 1)
        throw std::invalid_argument("bpnn_compute: the parameter arrays must be flat");
    const auto model = mlff::bpnn::parse<T>(ints.data(), ints.size(), reals.data(), reals.size(), doubles.data(),
                                            doubles.size());
    if (species.ndim() != 1 || first.ndim() != 1 || second.ndim() != 1 || vectors.ndim() != 2 ||
        vectors.shape(1) != 3 || first.shape(0) != second.shape(0) || vectors.shape(0) != first.shape(0))
        throw std::invalid_argument("bpnn_compute: species (N,), first (P,), second (P,), vectors (P, 3) expected");
    const int64_t n_atoms = species.shape(0), n_pairs = first.shape(0);
    if (n_energy_atoms < 0) n_energy_atoms = n_atoms;  // default: every atom
    mlff::AtomOutputs out(n_atoms, want_forces, want_virial);
    {
        py::gil_scoped_release release;
        mlff::bpnn::compute<T>(model, n_atoms, species.data(), n_pairs, first.data(), second.data(), vectors.data(),
                               n_energy_atoms, n_threads, out.e, out.f, out.v);
    }
    return out.tuple();
}

}  // namespace

void register_bpnn(py::module_& m) {
    const char* doc =
        "Behler-Parrinello model: (energies (N,), forces (N, 3) or None, per-atom virials (N, 3, 3) or None), "
        "float64, from the flat parameters (ints, reals, doubles; layout in bpnn_core.hpp), element index per "
        "atom, pairs (first, second) and pair vectors; n_energy_atoms < 0: all atoms (float32 version).";
    m.def("bpnn_compute", &compute<float>, py::arg("ints"), py::arg("reals"), py::arg("doubles"), py::arg("species"),
          py::arg("first"), py::arg("second"), py::arg("vectors"), py::arg("n_energy_atoms") = -1,
          py::arg("forces") = true, py::arg("virial") = false, py::arg("n_threads") = 0, doc);
    m.def("bpnn_compute", &compute<double>, py::arg("ints"), py::arg("reals"), py::arg("doubles"),
          py::arg("species"), py::arg("first"), py::arg("second"), py::arg("vectors"),
          py::arg("n_energy_atoms") = -1, py::arg("forces") = true, py::arg("virial") = false,
          py::arg("n_threads") = 0, "float64 version.");
}
