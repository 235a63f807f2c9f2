// Python binding of the GAP serving core (gap_core.hpp): GapCore(...) takes the model's flat
// arrays once (GAPModel keeps it while its parameters do not change) and GapCore.compute(...)
// evaluates one pair list without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "binding_py.hpp"

#include "gap_core.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

using mlff::darray;
using mlff::iarray;

void need_shape(const py::array& a, std::vector<int64_t> shape, const char* name) {
    bool ok = a.ndim() == py::ssize_t(shape.size());
    for (size_t k = 0; ok && k < shape.size(); ++k) ok = a.shape(k) == shape[k];
    if (!ok) {
        std::string want;
        for (size_t k = 0; k < shape.size(); ++k) want += (k ? ", " : "") + std::to_string(shape[k]);
        throw std::invalid_argument(std::string("GapCore: ") + name + " must have shape (" + want + ")");
    }
}

// The model's arrays (kept alive here) and the core's views over them.
class GapCore {
public:
    GapCore(int n_species, int n_max, int l_max, double soap_cutoff, double inv_h, darray soap_table,
            darray soap_central, int zeta, double delta, iarray sparse_start, darray sparse, darray alpha,
            double pair_cutoff, double pair_width, double pair_delta, double pair_theta, darray pair_sparse,
            darray beta, darray e0)
        : table_(soap_table), central_(soap_central), start_(sparse_start), sparse_(sparse), alpha_(alpha),
          pair_sparse_(pair_sparse), beta_(beta), e0_(e0) {
        if (n_species < 1 || n_max < 1 || l_max < 0 || l_max > mlff::soap::kMaxL)
            throw std::invalid_argument("GapCore: n_species, n_max must be positive and l_max from 0 to 20");
        const int64_t K = int64_t(n_max) * (l_max + 1);
        if (table_.ndim() != 3 || table_.shape(0) < 1 || table_.shape(1) != 4 || table_.shape(2) != K)
            throw std::invalid_argument("GapCore: soap_table must have shape (G, 4, n_max * (l_max + 1))");
        need_shape(central_, {n_max}, "soap_central");
        need_shape(start_, {n_species + 1}, "sparse_start");
        const int64_t M = start_.at(n_species);
        if (sparse_.ndim() != 2 || sparse_.shape(0) != M) throw std::invalid_argument("GapCore: sparse must be (M, Dp)");
        need_shape(alpha_, {M}, "alpha");
        need_shape(e0_, {n_species}, "e0");
        const int64_t keys = int64_t(n_species) * (n_species + 1) / 2;
        if (pair_sparse_.ndim() != 2 || pair_sparse_.shape(0) != keys)
            throw std::invalid_argument("GapCore: pair_sparse must be (n_species (n_species + 1) / 2, U)");
        need_shape(beta_, {keys, int64_t(pair_sparse_.shape(1))}, "beta");
        mlff::gap::Params p;
        p.n_species = n_species;
        p.n_max = n_max;
        p.l_max = l_max;
        p.n_intervals = table_.shape(0);
        p.soap_cutoff = soap_cutoff;
        p.inv_h = inv_h;
        p.soap_table = table_.data();
        p.soap_central = central_.data();
        p.zeta = zeta;
        p.delta = delta;
        p.sparse_start = start_.data();
        p.sparse_stride = sparse_.shape(1);
        p.sparse = sparse_.data();
        p.alpha = alpha_.data();
        p.pair_n_sparse = pair_sparse_.shape(1);
        p.pair_cutoff = pair_cutoff;
        p.pair_width = pair_width;
        p.pair_delta = pair_delta;
        p.pair_theta = pair_theta;
        p.pair_sparse = pair_sparse_.data();
        p.beta = beta_.data();
        p.e0 = e0_.data();
        model_ = std::make_unique<mlff::gap::Model>(p);
    }

    // (energies (N,), forces (N, 3) or None, virial (N, 3, 3) or None, power spectrum (N, D) or
    // None, coefficients (N, n_coeffs) or None)
    py::tuple compute(const iarray& species, const iarray& first, const iarray& second, const darray& vectors,
                      int64_t n_energy_atoms, bool forces, bool virial, bool soap, int n_threads) const {
        if (species.ndim() != 1) throw std::invalid_argument("GapCore.compute: species must be (N,)");
        const int64_t N = species.shape(0), P = first.size();
        need_shape(first, {P}, "first");
        need_shape(second, {P}, "second");
        need_shape(vectors, {P, 3}, "vectors");
        if (n_energy_atoms < 0) n_energy_atoms = N;
        py::array_t<double> e({N});
        py::array_t<double> f(std::vector<py::ssize_t>{forces ? N : 0, 3});
        py::array_t<double> w(std::vector<py::ssize_t>{virial ? N : 0, 3, 3});
        double* E = e.mutable_data();
        double* F = forces ? f.mutable_data() : nullptr;
        double* W = virial ? w.mutable_data() : nullptr;
        py::array_t<double> pw(std::vector<py::ssize_t>{soap ? N : 0, model_->dim()});
        py::array_t<double> cf(std::vector<py::ssize_t>{soap ? N : 0, model_->n_coeffs()});
        if (soap) {  // rows of atoms without energy stay zero
            std::fill(pw.mutable_data(), pw.mutable_data() + pw.size(), 0.0);
            std::fill(cf.mutable_data(), cf.mutable_data() + cf.size(), 0.0);
        }
        {
            py::gil_scoped_release release;
            model_->compute(N, species.data(), P, first.data(), second.data(), vectors.data(), n_energy_atoms,
                            n_threads, E, F, W, soap ? pw.mutable_data() : nullptr, soap ? cf.mutable_data() : nullptr);
        }
        auto maybe = [](bool on, const py::object& a) { return on ? a : py::object(py::none()); };
        return py::make_tuple(e, maybe(forces, f), maybe(virial, w), maybe(soap, pw), maybe(soap, cf));
    }

private:
    darray table_, central_;
    iarray start_;
    darray sparse_, alpha_, pair_sparse_, beta_, e0_;
    std::unique_ptr<mlff::gap::Model> model_;
};

}  // namespace

void register_gap(py::module_& m) {
    py::class_<GapCore>(m, "GapCore",
                        "A GAP model in the compiled core's flat layout (ase_mlff/_ext/gap_core.hpp); float64.")
        .def(py::init<int, int, int, double, double, darray, darray, int, double, iarray, darray, darray, double,
                      double, double, double, darray, darray, darray>(),
             py::arg("n_species"), py::arg("n_max"), py::arg("l_max"), py::arg("soap_cutoff"), py::arg("inv_h"),
             py::arg("soap_table"), py::arg("soap_central"), py::arg("zeta"), py::arg("delta"),
             py::arg("sparse_start"), py::arg("sparse"), py::arg("alpha"), py::arg("pair_cutoff"),
             py::arg("pair_width"), py::arg("pair_delta"), py::arg("pair_theta"), py::arg("pair_sparse"),
             py::arg("beta"), py::arg("e0"))
        .def("compute", &GapCore::compute, py::arg("species"), py::arg("first"), py::arg("second"),
             py::arg("vectors"), py::arg("n_energy_atoms") = -1, py::arg("forces") = true, py::arg("virial") = true,
             py::arg("soap") = false, py::arg("n_threads") = 0,
             "(energies (N,), forces (N, 3) = -dE/dr, per-atom virials (N, 3, 3), SOAP power spectrum (N, D), "
             "expansion coefficients (N, n_coeffs)) of one pair list, sorted or not (vectors (P, 3) = "
             "r_second - r_first + shift); None for what was not asked. Atoms from n_energy_atoms on "
             "(default -1: none) get no energy.");
}
