// Mapped n-body force fields (MFF): 2-body and 3-body uniform cubic B-splines, and the
// Gram-matrix kernel of the n-body Gaussian process they are mapped from.
//
// Energy convention (identical in the GP, the mapping, the torch oracle and the LAMMPS uf3
// export):
//   eps_i = sum_{j != i, r_ij < rc2} V2[s_i s_j](r_ij)
//         + sum_{j < k, r_ij < rc3, r_ik < rc3} V3[s_i s_j s_k](r_ij, r_ik, r_jk)
// Forces are -dE/dr, the virial is dE/d(strain) = sum over distances of (dV/dr) d (x) d / r.
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

// One uniform clamped cubic B-spline axis: n intervals of width h, table[m][b][p].
struct Axis {
    const double* table = nullptr;
    double h = 1.0;
    int64_t n = 0;
    int64_t ncoef = 0;

    // interval index and the 4 basis values / derivatives at x; false if outside [0, n*h)
    inline bool eval(double x, int64_t& m, double* b, double* db) const {
        if (!(x >= 0.0)) return false;
        const double s = x / h;
        m = static_cast<int64_t>(s);
        if (m >= n) return false;
        const double u = s - static_cast<double>(m);
        const double* t = table + m * 16;
        for (int k = 0; k < 4; ++k) {
            const double* c = t + 4 * k;
            b[k] = c[0] + u * (c[1] + u * (c[2] + u * c[3]));
            db[k] = (c[1] + u * (2.0 * c[2] + u * 3.0 * c[3])) / h;
        }
        return true;
    }
};

Axis make_axis(const DArray& table, double h, const char* name) {
    if (table.ndim() != 3 || table.shape(1) != 4 || table.shape(2) != 4)
        throw std::invalid_argument(std::string(name) + " table must have shape (n, 4, 4)");
    Axis a;
    a.table = table.data();
    a.h = h;
    a.n = table.shape(0);
    a.ncoef = a.n + 3;
    return a;
}

struct MFFOut {
    std::vector<double> energies, forces, virial;
};

py::tuple mff_compute(DArray positions, DArray cell, LArray species, LArray first, LArray second,
                      DArray shifts, int64_t n_species,
                      DArray table2, double h2, DArray coef2, double rc2,
                      DArray table3, double h3, DArray table3jk, double h3jk, DArray coef3,
                      double rc3, double jk_max, int n_threads) {
    const int64_t n = positions.ndim() == 2 ? positions.shape(0) : -1;
    if (n < 0 || positions.shape(1) != 3) throw std::invalid_argument("positions must be (N, 3)");
    if (cell.size() != 9) throw std::invalid_argument("cell must be 3 x 3");
    if (species.size() != n) throw std::invalid_argument("species must have N entries");
    const int64_t np_ = first.size();
    if (second.size() != np_ || shifts.size() != 3 * np_)
        throw std::invalid_argument("pair arrays have inconsistent lengths");
    const int64_t S = n_species;
    const bool has2 = coef2.size() > 0;
    const bool has3 = coef3.size() > 0 && rc3 > 0.0;
    Axis ax2, ax3, ax3jk;
    if (has2) {
        ax2 = make_axis(table2, h2, "2-body");
        if (coef2.size() != S * S * ax2.ncoef) throw std::invalid_argument("2-body coefficients have the wrong size");
    }
    if (has3) {
        ax3 = make_axis(table3, h3, "3-body");
        ax3jk = make_axis(table3jk, h3jk, "3-body jk");
        if (coef3.size() != S * S * S * ax3.ncoef * ax3.ncoef * ax3jk.ncoef)
            throw std::invalid_argument("3-body coefficients have the wrong size");
    }
    const double* pos = positions.data();
    const double* c = cell.data();
    const int64_t* sp = species.data();
    const int64_t* fi = first.data();
    const int64_t* se = second.data();
    const double* sh = shifts.data();
    const double* c2 = has2 ? coef2.data() : nullptr;
    const double* c3 = has3 ? coef3.data() : nullptr;
    for (int64_t a = 0; a < n; ++a)
        if (sp[a] < 0 || sp[a] >= S) throw std::invalid_argument("species index out of range");
    for (int64_t p = 0; p < np_; ++p)
        if (fi[p] < 0 || fi[p] >= n || se[p] < 0 || se[p] >= n)
            throw std::invalid_argument("pair index out of range");

    MFFOut out;
    out.energies.assign(n, 0.0);
    out.forces.assign(3 * n, 0.0);
    out.virial.assign(9, 0.0);
    // Threads over atoms: T contiguous blocks, one task each, with per-task force and virial
    // buffers summed in task order, so the result depends on T but not on the scheduling.
    // Below 2000 atoms the calling thread does it all (T = 1, no buffers).
    n_threads = mlff::resolve_threads(n_threads);
    if (n < 2000) n_threads = 1;
    {
        py::gil_scoped_release release;
        // CSR over centres (stable: keeps the order of the pair list within a centre)
        std::vector<int64_t> start(n + 1, 0), order(np_);
        for (int64_t p = 0; p < np_; ++p) start[fi[p] + 1]++;
        for (int64_t a = 0; a < n; ++a) start[a + 1] += start[a];
        {
            std::vector<int64_t> fill(start.begin(), start.end() - 1);
            for (int64_t p = 0; p < np_; ++p) order[fill[fi[p]]++] = p;
        }
        std::vector<double> vec(3 * np_), dist(np_);
        for (int64_t p = 0; p < np_; ++p) {
            const double* s = sh + 3 * p;
            for (int k = 0; k < 3; ++k)
                vec[3 * p + k] = pos[3 * se[p] + k] - pos[3 * fi[p] + k] + s[0] * c[k] + s[1] * c[3 + k] + s[2] * c[6 + k];
            dist[p] = std::sqrt(vec[3 * p] * vec[3 * p] + vec[3 * p + 1] * vec[3 * p + 1] + vec[3 * p + 2] * vec[3 * p + 2]);
        }
        const int64_t nc3 = has3 ? ax3.ncoef : 0, ncjk = has3 ? ax3jk.ncoef : 0;
        const int64_t block3 = nc3 * nc3 * ncjk;
        std::vector<std::vector<double>> fbuf(n_threads), vbuf(n_threads, std::vector<double>(9, 0.0));
        const int T = n_threads;
        mlff::parallel_for(T, T, [&](int64_t t) {
            std::vector<double>& F = (T == 1) ? out.forces : fbuf[t];
            if (T > 1) F.assign(3 * n, 0.0);
            double* W = vbuf[t].data();
            std::vector<int64_t> short_list;
            const int64_t chunk = (n + T - 1) / T;
            const int64_t a0 = t * chunk, a1 = std::min(n, a0 + chunk);
            for (int64_t i = a0; i < a1; ++i) {
                double e_i = 0.0;
                const int64_t si = sp[i];
                short_list.clear();
                for (int64_t q = start[i]; q < start[i + 1]; ++q) {
                    const int64_t p = order[q];
                    const double r = dist[p];
                    const double* d = &vec[3 * p];
                    const int64_t j = se[p];
                    if (has3 && r < rc3) short_list.push_back(p);
                    if (!has2 || !(r < rc2)) continue;
                    int64_t m;
                    double b[4], db[4];
                    if (!ax2.eval(r, m, b, db)) continue;
                    const double* cc = c2 + (si * S + sp[j]) * ax2.ncoef + m;
                    double e = 0.0, de = 0.0;
                    for (int k = 0; k < 4; ++k) {
                        e += cc[k] * b[k];
                        de += cc[k] * db[k];
                    }
                    e_i += e;
                    const double g = de / r;
                    for (int k = 0; k < 3; ++k) {
                        F[3 * i + k] += g * d[k];
                        F[3 * j + k] -= g * d[k];
                        for (int l = 0; l < 3; ++l) W[3 * k + l] += g * d[k] * d[l];
                    }
                }
                const int64_t ns = static_cast<int64_t>(short_list.size());
                for (int64_t aa = 0; aa < ns; ++aa) {
                    const int64_t p = short_list[aa];
                    const int64_t j = se[p];
                    const double* dij = &vec[3 * p];
                    const double rij = dist[p];
                    int64_t m1;
                    double b1[4], db1[4];
                    if (!ax3.eval(rij, m1, b1, db1)) continue;
                    for (int64_t bb = aa + 1; bb < ns; ++bb) {
                        const int64_t pk = short_list[bb];
                        const int64_t k = se[pk];
                        const double* dik = &vec[3 * pk];
                        const double djk[3] = {dik[0] - dij[0], dik[1] - dij[1], dik[2] - dij[2]};
                        const double rjk = std::sqrt(djk[0] * djk[0] + djk[1] * djk[1] + djk[2] * djk[2]);
                        if (!(rjk < jk_max)) continue;
                        const double rik = dist[pk];
                        int64_t m2, m3;
                        double b2[4], db2[4], b3[4], db3[4];
                        if (!ax3.eval(rik, m2, b2, db2)) continue;
                        if (!ax3jk.eval(rjk, m3, b3, db3)) continue;
                        const double* blk = c3 + ((si * S + sp[j]) * S + sp[k]) * block3;
                        double e = 0.0, g1 = 0.0, g2 = 0.0, g3 = 0.0;
                        for (int x = 0; x < 4; ++x) {
                            double s_e = 0.0, s_3 = 0.0, s_2 = 0.0;
                            for (int y = 0; y < 4; ++y) {
                                const double* row = blk + ((m1 + x) * nc3 + (m2 + y)) * ncjk + m3;
                                const double v = row[0] * b3[0] + row[1] * b3[1] + row[2] * b3[2] + row[3] * b3[3];
                                const double dv = row[0] * db3[0] + row[1] * db3[1] + row[2] * db3[2] + row[3] * db3[3];
                                s_e += b2[y] * v;
                                s_2 += db2[y] * v;
                                s_3 += b2[y] * dv;
                            }
                            e += b1[x] * s_e;
                            g1 += db1[x] * s_e;
                            g2 += b1[x] * s_2;
                            g3 += b1[x] * s_3;
                        }
                        e_i += e;
                        const double q1 = g1 / rij, q2 = g2 / rik, q3 = g3 / rjk;
                        for (int u = 0; u < 3; ++u) {
                            const double fj = q1 * dij[u] - q3 * djk[u];  // dE/dr_j
                            const double fk = q2 * dik[u] + q3 * djk[u];  // dE/dr_k
                            F[3 * j + u] -= fj;
                            F[3 * k + u] -= fk;
                            F[3 * i + u] += fj + fk;
                            for (int v = 0; v < 3; ++v)
                                W[3 * u + v] += q1 * dij[u] * dij[v] + q2 * dik[u] * dik[v] + q3 * djk[u] * djk[v];
                        }
                    }
                }
                out.energies[i] = e_i;
            }
        });
        if (n_threads > 1)
            for (int t = 0; t < n_threads; ++t)
                for (int64_t a = 0; a < 3 * n; ++a) out.forces[a] += fbuf[t][a];
        for (int t = 0; t < n_threads; ++t)
            for (int k = 0; k < 9; ++k) out.virial[k] += vbuf[t][k];
    }
    py::array_t<double> e(n), f({n, (int64_t)3}), w({(int64_t)3, (int64_t)3});
    std::copy(out.energies.begin(), out.energies.end(), e.mutable_data());
    std::copy(out.forces.begin(), out.forces.end(), f.mutable_data());
    std::copy(out.virial.begin(), out.virial.end(), w.mutable_data());
    return py::make_tuple(e, f, w);
}

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
    m.def("mff_compute", &mff_compute, py::arg("positions"), py::arg("cell"), py::arg("species"),
          py::arg("first"), py::arg("second"), py::arg("shifts"), py::arg("n_species"),
          py::arg("table2"), py::arg("h2"), py::arg("coef2"), py::arg("rc2"),
          py::arg("table3"), py::arg("h3"), py::arg("table3jk"), py::arg("h3jk"), py::arg("coef3"),
          py::arg("rc3"), py::arg("jk_max"), py::arg("n_threads") = 0,
          "Mapped 2+3-body spline energies per atom, forces and virial (dE/dstrain). "
          "n_threads: 0 = the configured count (set_num_threads).");
    m.def("gp_gram", &gp_gram, py::arg("x1"), py::arg("grp1"), py::arg("spec1"), py::arg("a1"), py::arg("b1"),
          py::arg("G1"), py::arg("x2"), py::arg("grp2"), py::arg("spec2"), py::arg("a2"), py::arg("b2"),
          py::arg("G2"), py::arg("ell"), py::arg("symmetric") = false, py::arg("n_threads") = 0,
          "Gram matrix of linear functionals (values and gradients) of an n-body SE-kernel GP. "
          "n_threads: 0 = the configured count (set_num_threads).");
}
