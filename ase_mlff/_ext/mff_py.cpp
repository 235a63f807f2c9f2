// Python binding of the MFF serving core (mff_core.hpp): mff_compute(...) takes one pair list and
// the model's flat arrays (MFFModel.core_parameters, passed by keyword) and evaluates without the
// GIL. Building the core's Model is only a few checks, so there is no object to keep.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "binding_py.hpp"
#include <pybind11/stl.h>

#include "mff_core.hpp"

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

using mlff::darray;
using mlff::iarray;

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("mff_compute: " + what); }

using optional_darray = std::optional<darray>;

// a spline table of n intervals: shape (n, 4, 4), n >= 1
const double* table(const optional_darray& t, int64_t n, const char* name, const char* n_name) {
    if (!t) bad(std::string(name) + " is required with its term");
    if (n < 1) bad(std::string(n_name) + " must be at least 1");
    if (t->ndim() != 3 || t->shape(0) != n || t->shape(1) != 4 || t->shape(2) != 4)
        bad(std::string(name) + " must have shape (" + n_name + ", 4, 4)");
    return t->data();
}

// (energies (N,), forces (N, 3) or None, per-atom virials (N, 3, 3) or None)
py::tuple mff_compute(const iarray& species, const iarray& first, const iarray& second, const darray& vectors,
                      int64_t n_energy_atoms, bool want_forces, bool want_virial, int n_threads, int64_t n_species,
                      const optional_darray& table2, int64_t n2, double h2, const optional_darray& coef2, double rc2,
                      const optional_darray& table3, int64_t n3, double h3, const optional_darray& table3jk,
                      int64_t n3jk, double h3jk, const optional_darray& coef3, double rc3, double jk_max,
                      const optional_darray& e0) {
    if (species.ndim() != 1 || first.ndim() != 1 || second.ndim() != 1 || vectors.ndim() != 2 ||
        vectors.shape(1) != 3 || first.shape(0) != second.shape(0) || vectors.shape(0) != first.shape(0))
        bad("species (N,), first (P,), second (P,), vectors (P, 3) expected");
    const int64_t S = n_species;
    if (S < 1) bad("n_species must be at least 1");
    // sizes are compared in double: no int64 overflow on absurd counts
    mlff::mff::Params p;
    p.n_species = S;
    if (coef2) {  // None: no 2-body term
        p.table2 = table(table2, n2, "table2", "n2");
        if (double(coef2->size()) != double(S) * S * (n2 + 3))
            bad("coef2 must have shape (n_species, n_species, n2 + 3)");
        p.coef2 = coef2->data();
    }
    p.n2 = n2, p.h2 = h2, p.rc2 = rc2;
    if (coef3) {  // None: no 3-body term
        p.table3 = table(table3, n3, "table3", "n3");
        p.table3jk = table(table3jk, n3jk, "table3jk", "n3jk");
        if (double(coef3->size()) != double(S) * S * S * (n3 + 3) * (n3 + 3) * (n3jk + 3))
            bad("coef3 must have shape (n_species, n_species, n_species, n3 + 3, n3 + 3, n3jk + 3)");
        p.coef3 = coef3->data();
    }
    p.n3 = n3, p.h3 = h3, p.n3jk = n3jk, p.h3jk = h3jk, p.rc3 = rc3, p.jk_max = jk_max;
    if (e0) {  // None: no reference energies
        if (e0->ndim() != 1 || e0->shape(0) != S) bad("e0 must have shape (n_species,)");
        p.e0 = e0->data();
    }
    const mlff::mff::Model model(p);
    const int64_t n_atoms = species.shape(0), n_pairs = first.shape(0);
    mlff::AtomOutputs out(n_atoms, want_forces, want_virial);
    {
        py::gil_scoped_release release;
        model.compute(n_atoms, species.data(), n_pairs, first.data(), second.data(), vectors.data(), n_energy_atoms,
                      n_threads, out.e, out.f, out.v);
    }
    return out.tuple();
}

}  // namespace

void register_mff_core(py::module_& m) {
    m.def("mff_compute", &mff_compute, py::arg("species"), py::arg("first"), py::arg("second"), py::arg("vectors"),
          py::arg("n_energy_atoms") = -1, py::arg("forces") = true, py::arg("virial") = true,
          py::arg("n_threads") = 0, py::kw_only(), py::arg("n_species"), py::arg("table2").none(true), py::arg("n2"),
          py::arg("h2"), py::arg("coef2").none(true), py::arg("rc2"), py::arg("table3").none(true), py::arg("n3"),
          py::arg("h3"), py::arg("table3jk").none(true), py::arg("n3jk"), py::arg("h3jk"),
          py::arg("coef3").none(true), py::arg("rc3"), py::arg("jk_max"), py::arg("e0").none(true),
          "Mapped 2+3-body splines (mff_core.hpp): (energies (N,) incl. e0, forces (N, 3) = -dE/dr or None, "
          "per-atom virials (N, 3, 3) or None) of one pair list, sorted or not (vectors (P, 3) = "
          "r_second - r_first + shift). Only atoms below n_energy_atoms (default -1: all) have energies. "
          "The model by keyword, the fields of mff_core.hpp's Params (MFFModel.core_parameters()); "
          "coef2 / coef3 / e0 None: no such term. n_threads: 0 = the configured count (set_num_threads).");
}
