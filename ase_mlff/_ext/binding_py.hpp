// What the family cores' Python bindings (bpnn_py, schnet_py, gap_py, mff_py) share: the numpy
// array types they take, and the per-atom outputs of a core call as numpy arrays.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

namespace mlff {

// float arrays without forcecast, so that float32 and float64 overloads dispatch by dtype
template <typename T>
using carray = pybind11::array_t<T, pybind11::array::c_style>;
using iarray = pybind11::array_t<int64_t, pybind11::array::c_style | pybind11::array::forcecast>;
using darray = pybind11::array_t<double, pybind11::array::c_style | pybind11::array::forcecast>;

// energies (N,), and when asked forces (N, 3) and per-atom virials (N, 3, 3), else None, with
// the raw pointers the core writes into (null when not asked)
struct AtomOutputs {
    pybind11::array_t<double> energies;
    pybind11::object forces = pybind11::none(), virials = pybind11::none();
    double *e = nullptr, *f = nullptr, *v = nullptr;

    AtomOutputs(int64_t n_atoms, bool want_forces, bool want_virials) : energies({n_atoms}) {
        e = energies.mutable_data();
        if (want_forces) {
            pybind11::array_t<double> a({n_atoms, int64_t(3)});
            f = a.mutable_data();
            forces = a;
        }
        if (want_virials) {
            pybind11::array_t<double> a({n_atoms, int64_t(3), int64_t(3)});
            v = a.mutable_data();
            virials = a;
        }
    }
    pybind11::tuple tuple() const { return pybind11::make_tuple(energies, forces, virials); }
};

}  // namespace mlff
