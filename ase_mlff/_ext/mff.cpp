// The Gram-matrix kernel of the n-body Gaussian process that mapped n-body force fields (MFF)
// are mapped from (training, ase_mlff/training/mff_gp.py). The mapped splines themselves are
// evaluated by the serving core mff_core.hpp (binding: mff_py.cpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "pool.hpp"

namespace py = pybind11;

namespace {

using DArray = py::array_t<double, py::array::c_style | py::array::forcecast>;
using LArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using IArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// ------------------------------------------------------------------------------------
// GP Gram matrix between two sets of linear functionals of an n-body function g.
//
// Every functional (a "group": a total energy, the 3 force components of an atom, a
// local-energy query, ...) is a sum over entries u of  a_uc g(x_u) + b_uc . grad g(x_u)
// (c = channel of the group). The kernel of g is the squared exponential in the n-plet
// distances, summed over the permutations P of the n-plet that keep the species labels:
//   k(x, x') = sum_P [s == P s'] exp(-|x - P x'|^2 / (2 l^2)).
// D = 1 (pairs, species pair stored sorted, one permutation) or D = 3 (triangles: sides
// (r01, r02, r12), vertex species (s0, s1, s2), the 6 vertex permutations).
// Returns K of shape (G1*C1, G2*C2).

struct GramInput {
    int64_t U1, U2, G1, G2;
    const double *X1, *A1, *B1;
    const int64_t* g1;
    const int32_t* S1;
    // expanded (permuted) second set
    std::vector<double> Y, A2, B2;
    std::vector<int64_t> g2;
    std::vector<int32_t> S2;
    std::vector<int64_t> gs1, gs2;  // group starts (set 1 entries, set 2 expanded entries)
};

template <int D, int C1, int C2>
void gram_kernel(const GramInput& in, double ell, bool symmetric, int n_threads, double* KK) {
    constexpr int V = (D == 1) ? 2 : 3;
    const int64_t Ccols = in.G2 * C2;
    const double il2 = 1.0 / (ell * ell), il4 = il2 * il2, half = 0.5 * il2;
    const double qmax = 100.0 * ell * ell;  // exp(-50) ~ 2e-22
    // one task per row group: each K row is written by one thread, in the same order whatever
    // the thread count, so K is identical for any count
    mlff::parallel_for(in.G1, n_threads, [&](int64_t ga) {
        const int64_t v0 = symmetric ? in.gs2[ga] : 0;
        const int64_t v1 = static_cast<int64_t>(in.g2.size());
        double* Krow = KK + ga * C1 * Ccols;
        for (int64_t u = in.gs1[ga]; u < in.gs1[ga + 1]; ++u) {
            const double* xu = in.X1 + u * D;
            const int32_t* su = in.S1 + u * V;
            const double* au = in.A1 + u * C1;
            const double* bu = in.B1 + u * C1 * D;
            for (int64_t v = v0; v < v1; ++v) {
                const int32_t* sv = &in.S2[v * V];
                bool ok = su[0] == sv[0] && su[1] == sv[1];
                if (V == 3) ok = ok && su[V - 1] == sv[V - 1];
                if (!ok) continue;
                const double* yv = &in.Y[v * D];
                double dlt[D];
                double q = 0.0;
                for (int k = 0; k < D; ++k) {
                    dlt[k] = xu[k] - yv[k];
                    q += dlt[k] * dlt[k];
                }
                if (q > qmax) continue;
                const double kv = std::exp(-half * q);
                const double* av = &in.A2[v * C2];
                const double* bv = &in.B2[v * C2 * D];
                double bd[C1], bpd[C2];
                for (int c = 0; c < C1; ++c) {
                    double s = 0.0;
                    for (int k = 0; k < D; ++k) s += bu[c * D + k] * dlt[k];
                    bd[c] = s;
                }
                for (int c = 0; c < C2; ++c) {
                    double s = 0.0;
                    for (int k = 0; k < D; ++k) s += bv[c * D + k] * dlt[k];
                    bpd[c] = s;
                }
                double* kr0 = Krow + in.g2[v] * C2;
                for (int c1 = 0; c1 < C1; ++c1) {
                    double* kr = kr0 + c1 * Ccols;
                    const double ac = au[c1], bdc = bd[c1];
                    for (int c2 = 0; c2 < C2; ++c2) {
                        double bb = 0.0;
                        for (int k = 0; k < D; ++k) bb += bu[c1 * D + k] * bv[c2 * D + k];
                        kr[c2] += kv * (ac * av[c2] + (ac * bpd[c2] - av[c2] * bdc + bb) * il2 - bdc * bpd[c2] * il4);
                    }
                }
            }
        }
    });
}

template <int D, int C1>
void gram_dispatch2(const GramInput& in, int64_t C2, double ell, bool sym, int nt, double* K) {
    if (C2 == 1) gram_kernel<D, C1, 1>(in, ell, sym, nt, K);
    else if (C2 == 3) gram_kernel<D, C1, 3>(in, ell, sym, nt, K);
    else if (C2 == 4) gram_kernel<D, C1, 4>(in, ell, sym, nt, K);
    else throw std::invalid_argument("channels must be 1, 3 or 4");
}

template <int D>
void gram_dispatch1(const GramInput& in, int64_t C1, int64_t C2, double ell, bool sym, int nt, double* K) {
    if (C1 == 1) gram_dispatch2<D, 1>(in, C2, ell, sym, nt, K);
    else if (C1 == 3) gram_dispatch2<D, 3>(in, C2, ell, sym, nt, K);
    else if (C1 == 4) gram_dispatch2<D, 4>(in, C2, ell, sym, nt, K);
    else throw std::invalid_argument("channels must be 1, 3 or 4");
}

py::array_t<double> gp_gram(DArray x1, LArray grp1, IArray spec1, DArray a1, DArray b1, int64_t G1,
                            DArray x2, LArray grp2, IArray spec2, DArray a2, DArray b2, int64_t G2,
                            double ell, bool symmetric, int n_threads) {
    if (x1.ndim() != 2 || x2.ndim() != 2) throw std::invalid_argument("x must be (U, D)");
    const int64_t D = x1.shape(1);
    if (x2.shape(1) != D || (D != 1 && D != 3)) throw std::invalid_argument("D must be 1 or 3 and equal");
    const int64_t U1 = x1.shape(0), U2 = x2.shape(0);
    if (a1.ndim() != 2 || a2.ndim() != 2 || a1.shape(0) != U1 || a2.shape(0) != U2)
        throw std::invalid_argument("a must be (U, C)");
    const int64_t C1 = a1.shape(1), C2 = a2.shape(1);
    if (b1.size() != U1 * C1 * D || b2.size() != U2 * C2 * D) throw std::invalid_argument("b must be (U, C, D)");
    const int64_t V = (D == 1) ? 2 : 3;
    if (spec1.size() != U1 * V || spec2.size() != U2 * V) throw std::invalid_argument("species must be (U, 2|3)");
    if (grp1.size() != U1 || grp2.size() != U2) throw std::invalid_argument("group arrays have the wrong size");
    if (!(ell > 0)) throw std::invalid_argument("length scale must be positive");
    GramInput in;
    in.U1 = U1;
    in.U2 = U2;
    in.G1 = G1;
    in.G2 = G2;
    in.X1 = x1.data();
    in.A1 = a1.data();
    in.B1 = b1.data();
    in.g1 = grp1.data();
    in.S1 = spec1.data();
    const int64_t* g2 = grp2.data();
    const double* X2 = x2.data();
    const double* A2 = a2.data();
    const double* B2 = b2.data();
    const int32_t* S2 = spec2.data();
    for (int64_t u = 0; u < U1; ++u)
        if (in.g1[u] < 0 || in.g1[u] >= G1 || (u > 0 && in.g1[u] < in.g1[u - 1]))
            throw std::invalid_argument("grp1 must be sorted and within [0, G1)");
    for (int64_t u = 0; u < U2; ++u)
        if (g2[u] < 0 || g2[u] >= G2 || (u > 0 && g2[u] < g2[u - 1]))
            throw std::invalid_argument("grp2 must be sorted and within [0, G2)");
    if (symmetric && (G1 != G2 || C1 != C2 || U1 != U2)) throw std::invalid_argument("symmetric needs equal sets");

    // vertex permutations of a triangle and the side permutation each induces
    int nperm = 1;
    int vperm[6][3] = {{0, 1, 2}};
    int sperm[6][3] = {{0, 1, 2}};
    if (D == 3) {
        const int vp[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
        auto side = [](int a, int b) { int lo = std::min(a, b), hi = std::max(a, b); return lo == 0 ? (hi == 1 ? 0 : 1) : 2; };
        nperm = 6;
        for (int p = 0; p < 6; ++p) {
            for (int k = 0; k < 3; ++k) vperm[p][k] = vp[p][k];
            sperm[p][0] = side(vp[p][0], vp[p][1]);
            sperm[p][1] = side(vp[p][0], vp[p][2]);
            sperm[p][2] = side(vp[p][1], vp[p][2]);
        }
    }
    // expand the second set by the permutations (entries stay sorted by group)
    const int64_t UE = U2 * nperm;
    in.Y.resize(UE * D);
    in.A2.resize(UE * C2);
    in.B2.resize(UE * C2 * D);
    in.g2.resize(UE);
    in.S2.resize(UE * V);
    for (int64_t v = 0; v < U2; ++v)
        for (int p = 0; p < nperm; ++p) {
            const int64_t e = v * nperm + p;
            in.g2[e] = g2[v];
            for (int k = 0; k < D; ++k) in.Y[e * D + k] = X2[v * D + (D == 1 ? 0 : sperm[p][k])];
            for (int64_t c = 0; c < C2; ++c) {
                in.A2[e * C2 + c] = A2[v * C2 + c];
                for (int k = 0; k < D; ++k)
                    in.B2[(e * C2 + c) * D + k] = B2[(v * C2 + c) * D + (D == 1 ? 0 : sperm[p][k])];
            }
            for (int k = 0; k < V; ++k) in.S2[e * V + k] = S2[v * V + (D == 1 ? k : vperm[p][k])];
        }
    in.gs1.assign(G1 + 1, 0);
    in.gs2.assign(G2 + 1, 0);
    for (int64_t u = 0; u < U1; ++u) in.gs1[in.g1[u] + 1]++;
    for (int64_t g = 0; g < G1; ++g) in.gs1[g + 1] += in.gs1[g];
    for (int64_t e = 0; e < UE; ++e) in.gs2[in.g2[e] + 1]++;
    for (int64_t g = 0; g < G2; ++g) in.gs2[g + 1] += in.gs2[g];

    const int64_t R = G1 * C1, Ccols = G2 * C2;
    py::array_t<double> K({R, Ccols});
    double* KK = K.mutable_data();
    std::fill(KK, KK + R * Ccols, 0.0);
    n_threads = mlff::resolve_threads(n_threads);
    {
        py::gil_scoped_release release;
        if (D == 1) gram_dispatch1<1>(in, C1, C2, ell, symmetric, n_threads, KK);
        else gram_dispatch1<3>(in, C1, C2, ell, symmetric, n_threads, KK);
        if (symmetric) {
            for (int64_t ga = 0; ga < G1; ++ga)
                for (int64_t gb = ga + 1; gb < G2; ++gb)
                    for (int64_t c1 = 0; c1 < C1; ++c1)
                        for (int64_t c2 = 0; c2 < C2; ++c2)
                            KK[(gb * C2 + c2) * Ccols + ga * C1 + c1] = KK[(ga * C1 + c1) * Ccols + gb * C2 + c2];
        }
    }
    return K;
}

}  // namespace

void register_mff(py::module_& m) {
    m.def("gp_gram", &gp_gram, py::arg("x1"), py::arg("grp1"), py::arg("spec1"), py::arg("a1"), py::arg("b1"),
          py::arg("G1"), py::arg("x2"), py::arg("grp2"), py::arg("spec2"), py::arg("a2"), py::arg("b2"),
          py::arg("G2"), py::arg("ell"), py::arg("symmetric") = false, py::arg("n_threads") = 0,
          "Gram matrix of linear functionals (values and gradients) of an n-body SE-kernel GP. "
          "n_threads: 0 = the configured count (set_num_threads).");
}
