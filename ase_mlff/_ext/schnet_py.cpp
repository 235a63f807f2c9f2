// Python binding of the SchNet serving core (schnet_core.hpp): numpy arrays in, numpy arrays
// out, the work done without the GIL. ase_mlff/models/schnet.py builds the flat parameter array.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "binding_py.hpp"
#include <pybind11/stl.h>

#include "schnet_core.hpp"

#include <optional>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace {

using mlff::carray;
using mlff::darray;
using mlff::iarray;

void check_size(const py::array& a, int64_t n, const char* what) {
    if (a.size() != n)
        throw std::invalid_argument(std::string("schnet_compute: ") + what + " must have " + std::to_string(n) +
                                    " values, got " + std::to_string(a.size()));
}

template <typename T>
py::tuple compute(const carray<T>& weights, py::tuple sizes, double inv_h, double cutoff, const darray& e0,
                  double energy_scale, std::optional<darray> inner, double width, std::optional<darray> atomic_numbers,
                  const iarray& species, const iarray& first, const iarray& second, const darray& vectors,
                  int64_t n_energy_atoms, bool forces, bool virials, int n_threads) {
    if (sizes.size() != 5) throw std::invalid_argument("schnet_compute: sizes must be (S, F, H, n_blocks, G)");
    mlff::schnet::Model<T> m;
    m.layout = {sizes[0].cast<int64_t>(), sizes[1].cast<int64_t>(), sizes[2].cast<int64_t>(),
                sizes[3].cast<int64_t>(), sizes[4].cast<int64_t>()};
    const int64_t S = m.layout.S;
    check_size(weights, m.layout.size(), "the flat weights");
    check_size(e0, S, "e0");
    m.weights = weights.data();
    m.inv_h = inv_h, m.cutoff = cutoff, m.e0 = e0.data(), m.energy_scale = energy_scale;
    if (inner.has_value() != atomic_numbers.has_value())
        throw std::invalid_argument("schnet_compute: the prior needs both inner and atomic_numbers");
    if (inner) {
        check_size(*inner, S * S, "inner");
        check_size(*atomic_numbers, S, "atomic_numbers");
        if (!(width > 0)) throw std::invalid_argument("schnet_compute: the prior's width must be positive");
        m.inner = inner->data(), m.atomic_numbers = atomic_numbers->data(), m.width = width;
    }
    const int64_t N = species.size(), P = first.size();
    check_size(second, P, "second");
    if (vectors.ndim() != 2 || vectors.shape(0) != P || vectors.shape(1) != 3)
        throw std::invalid_argument("schnet_compute: vectors must have shape (n_pairs, 3)");
    mlff::schnet::Input in;
    in.n_atoms = N, in.species = species.data(), in.n_pairs = P, in.first = first.data(),
    in.second = second.data(), in.vectors = vectors.data(), in.n_energy_atoms = n_energy_atoms,
    in.n_threads = n_threads;
    const mlff::AtomOutputs res(N, forces, virials);
    mlff::schnet::Output out;
    out.energies = res.e, out.forces = res.f, out.virials = res.v;
    {
        py::gil_scoped_release release;
        mlff::schnet::compute(m, in, out);
    }
    return res.tuple();
}

}  // namespace

void register_schnet(py::module_& m) {
    const char* doc =
        "SchNet energies (N,), forces (N, 3) or None, per-atom virials (N, 3, 3) or None, float64, "
        "from the flat parameters (layout in schnet_core.hpp; float32 or float64: the network's "
        "arithmetic), sizes (S, F, H, n_blocks, G), and the pairs (first, second, vectors (P, 3)). "
        "Only atoms < n_energy_atoms (-1: all) are differentiated.";
    auto def = [&](auto fn) {
        m.def("schnet_compute", fn, py::arg("weights"), py::arg("sizes"), py::arg("inv_h"), py::arg("cutoff"),
              py::arg("e0"), py::arg("energy_scale"), py::arg("inner"), py::arg("width"), py::arg("atomic_numbers"),
              py::arg("species"), py::arg("first"), py::arg("second"), py::arg("vectors"),
              py::arg("n_energy_atoms") = -1, py::arg("forces") = true, py::arg("virials") = true,
              py::arg("n_threads") = 0, doc);
    };
    def(&compute<float>);
    def(&compute<double>);
}
