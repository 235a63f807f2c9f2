// MFF serving core (see mff_core.hpp for the model, the layout and the guarantees).
#include "mff_core.hpp"

#include "scratch.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace mlff {
namespace mff {

namespace {

// centres per task: a fixed size (results do not depend on the thread count), small enough to
// balance two threads on a ~100-atom cell (a Ni centre, ~200 pairs of arms, takes ~7 µs)
constexpr int64_t kCentres = 16;

// One uniform clamped cubic B-spline axis: n intervals of width h, table[m][k][power].
struct Axis {
    const double* table = nullptr;
    double h = 1.0;
    int64_t n = 0;

    int64_t n_coef() const { return n + 3; }

    // interval index and the 4 basis values / derivatives at x; false if outside [0, n h)
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

Axis make_axis(const double* table, int64_t n, double h, const char* table_name, const char* n_name,
               const char* h_name) {
    if (!table) throw std::invalid_argument(std::string("mff: ") + table_name + " is required with its term");
    if (n < 1) throw std::invalid_argument(std::string("mff: ") + n_name + " must be at least 1");
    if (!(h > 0) || !std::isfinite(h))
        throw std::invalid_argument(std::string("mff: ") + h_name + " must be positive and finite");
    Axis a;
    a.table = table;
    a.n = n;
    a.h = h;
    return a;
}

// a cutoff of a present term: positive and finite
void check_cutoff(double rc, const char* name) {
    if (!(rc > 0) || !std::isfinite(rc))
        throw std::invalid_argument(std::string("mff: ") + name + " must be positive and finite");
}

// A centre's pair inside the 3-body cutoff and on the 3-body axis: its index, neighbour species,
// length, interval and 4 basis values / derivatives (evaluated once per arm, not per triangle).
struct Arm {
    int64_t p, s;
    double r;
    int64_t m;
    double b[4], db[4];
};

}  // namespace

Model::Model(const Params& params) : p_(params) {
    const int64_t S = p_.n_species;
    if (S < 1 || S > 1000) throw std::invalid_argument("mff: n_species must be from 1 to 1000");
    // sizes must fit in int64 (the Python side bounds the grids far lower; a host reading a file
    // gets a clear error instead of an overflowed index)
    const double big = 4e18;
    if (p_.coef2) {
        make_axis(p_.table2, p_.n2, p_.h2, "table2", "n2", "h2");
        check_cutoff(p_.rc2, "rc2");
        if (double(S) * S * (double(p_.n2) + 3) > big) throw std::invalid_argument("mff: n2 is too large");
    }
    if (p_.coef3) {
        make_axis(p_.table3, p_.n3, p_.h3, "table3", "n3", "h3");
        make_axis(p_.table3jk, p_.n3jk, p_.h3jk, "table3jk", "n3jk", "h3jk");
        check_cutoff(p_.rc3, "rc3");
        if (!(p_.jk_max >= 0) || !std::isfinite(p_.jk_max))
            throw std::invalid_argument("mff: jk_max must be finite and not negative");
        const double c3 = double(p_.n3) + 3;
        if (double(S) * S * S * c3 * c3 * (double(p_.n3jk) + 3) > big)
            throw std::invalid_argument("mff: n3 or n3jk is too large");
    }
}

double Model::cutoff() const {
    return std::max(p_.coef2 ? p_.rc2 : 0.0, p_.coef3 ? p_.rc3 : 0.0);
}

void Model::compute(int64_t n_atoms, const int64_t* species, int64_t n_pairs, const int64_t* first,
                    const int64_t* second, const double* vectors, int64_t n_energy_atoms, int n_threads,
                    double* energies, double* forces, double* virial) const {
    const int64_t S = p_.n_species;
    if (n_atoms < 0 || n_pairs < 0) throw std::invalid_argument("mff: negative atom or pair count");
    if (n_energy_atoms == -1) n_energy_atoms = n_atoms;
    if (n_energy_atoms < 0 || n_energy_atoms > n_atoms)
        throw std::invalid_argument("mff: n_energy_atoms must be from 0 to the number of atoms (-1: all)");
    for (int64_t i = 0; i < n_atoms; ++i)
        if (species[i] < 0 || species[i] >= S)
            throw std::out_of_range("mff: atom " + std::to_string(i) + " has species index " +
                                    std::to_string(species[i]) + ", not one of the model's " + std::to_string(S));
    // a NaN vector would fail every length test below and drop out as "beyond the cutoff"; a
    // zero one would divide by zero
    for (int64_t p = 0; p < n_pairs; ++p) {
        const double* d = vectors + 3 * p;
        const double r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
        if (!std::isfinite(r2))
            throw std::invalid_argument("mff: pair " + std::to_string(p) + " has a NaN or infinite vector");
        if (!(r2 > 0))
            throw std::invalid_argument("mff: pair " + std::to_string(p) +
                                        " has zero length (two atoms at the same position)");
    }
    const int threads_asked = resolve_threads(n_threads);
    const PairIndex x = index_pairs(n_atoms, n_pairs, first, second);
    const bool need_grad = forces || virial;

    const bool has2 = p_.coef2 != nullptr, has3 = p_.coef3 != nullptr;
    Axis ax2, ax3, ax3jk;
    if (has2) ax2 = make_axis(p_.table2, p_.n2, p_.h2, "table2", "n2", "h2");
    if (has3) {
        ax3 = make_axis(p_.table3, p_.n3, p_.h3, "table3", "n3", "h3");
        ax3jk = make_axis(p_.table3jk, p_.n3jk, p_.h3jk, "table3jk", "n3jk", "h3jk");
    }
    const double rc2 = p_.rc2, rc3 = p_.rc3, jk_max = p_.jk_max;
    // most arm pairs of a dense solid are farther apart than jk_max (Ni: ~60%): their squared
    // distance, against a bound a little above jk_max^2, skips them before the square root and
    // never skips a triangle that the exact test r_jk < jk_max keeps
    const double far2 = jk_max * jk_max * (1.0 + 1e-10);
    // with jk_max >= 2 rc3 (centred triplets) no two arms are that far apart: no such test
    const bool all_near = far2 > 4.0 * rc3 * rc3;
    const double* c2 = p_.coef2;
    const double* c3 = p_.coef3;
    const int64_t nc2 = has2 ? ax2.n_coef() : 0;
    const int64_t nc3 = has3 ? ax3.n_coef() : 0, ncjk = has3 ? ax3jk.n_coef() : 0;
    const int64_t block3 = nc3 * nc3 * ncjk;

    // g_p = d eps_{first[p]} / d d_p; pairs of ghost centres keep 0 (kept between calls, scratch.hpp)
    ScratchVector<double> g(need_grad ? 3 * n_pairs : 0, 0.0);
    const int64_t tasks = (n_energy_atoms + kCentres - 1) / kCentres;
    const int threads = n_energy_atoms >= 2 * kCentres ? threads_asked : 1;
    parallel_for(tasks, threads, [&](int64_t task) {
        // kept between tasks and calls: no allocation per task
        thread_local std::vector<Arm> arms;
        thread_local std::vector<int64_t> near;
        const int64_t a = task * kCentres, b = std::min(n_energy_atoms, a + kCentres);
        for (int64_t i = a; i < b; ++i) {
            double e_i = 0.0;
            const int64_t si = species[i];
            arms.clear();
            for (int64_t t = x.first_start[i]; t < x.first_start[i + 1]; ++t) {
                const int64_t p = x.first_pair(t);
                const double* d = vectors + 3 * p;
                const double r = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
                if (has3 && r < rc3) {
                    Arm arm;
                    arm.p = p;
                    arm.s = species[second[p]];
                    arm.r = r;
                    if (ax3.eval(r, arm.m, arm.b, arm.db)) arms.push_back(arm);
                }
                if (!has2 || !(r < rc2)) continue;
                int64_t m;
                double bs[4], dbs[4];
                if (!ax2.eval(r, m, bs, dbs)) continue;
                const double* cc = c2 + (si * S + species[second[p]]) * nc2 + m;
                double e = 0.0, de = 0.0;
                for (int k = 0; k < 4; ++k) {
                    e += cc[k] * bs[k];
                    de += cc[k] * dbs[k];
                }
                e_i += e;
                if (!need_grad) continue;
                const double q = de / r;
                double* gp = g.data() + 3 * p;
                for (int k = 0; k < 3; ++k) gp[k] += q * d[k];
            }
            // triangles (j, k) of the centre's arms, in pair-list order
            const int64_t n_arms = static_cast<int64_t>(arms.size());
            if (int64_t(near.size()) < n_arms) near.resize(n_arms);
            for (int64_t u = 0; u < n_arms; ++u) {
                const Arm& aj = arms[u];
                const double* dij = vectors + 3 * aj.p;
                const double rij = aj.r;
                const int64_t m1 = aj.m;
                const double *b1 = aj.b, *db1 = aj.db;
                const double* blk_j = c3 + (si * S + aj.s) * S * block3;
                // g of the pair (i, j), summed here: only this loop adds to it while it runs, in
                // the same order as adding to memory would (the compiler cannot know pk != p)
                double gj[3] = {0.0, 0.0, 0.0};
                if (need_grad)
                    for (int c = 0; c < 3; ++c) gj[c] = g[3 * aj.p + c];
                // one triangle (i, j, k): its energy, and its gradient to the pairs (i, j), (i, k)
                auto close = [&](const Arm& ak) {
                    const double* dik = vectors + 3 * ak.p;
                    const double djk[3] = {dik[0] - dij[0], dik[1] - dij[1], dik[2] - dij[2]};
                    const double rjk = std::sqrt(djk[0] * djk[0] + djk[1] * djk[1] + djk[2] * djk[2]);
                    if (!(rjk < jk_max)) return;
                    const double rik = ak.r;
                    const int64_t m2 = ak.m;
                    const double *b2 = ak.b, *db2 = ak.db;
                    int64_t m3;
                    double b3[4], db3[4];
                    if (!ax3jk.eval(rjk, m3, b3, db3)) return;
                    const double* blk = blk_j + ak.s * block3;
                    // V3 and its three partial derivatives: the 4 x 4 x 4 live coefficients,
                    // contracted along r_jk, then r_ik, then r_ij
                    double e = 0.0, g1 = 0.0, g2 = 0.0, g3 = 0.0;
                    for (int xx = 0; xx < 4; ++xx) {
                        double s_e = 0.0, s_3 = 0.0, s_2 = 0.0;
                        for (int yy = 0; yy < 4; ++yy) {
                            const double* row = blk + ((m1 + xx) * nc3 + (m2 + yy)) * ncjk + m3;
                            const double val = row[0] * b3[0] + row[1] * b3[1] + row[2] * b3[2] + row[3] * b3[3];
                            const double dval = row[0] * db3[0] + row[1] * db3[1] + row[2] * db3[2] + row[3] * db3[3];
                            s_e += b2[yy] * val;
                            s_2 += db2[yy] * val;
                            s_3 += b2[yy] * dval;
                        }
                        e += b1[xx] * s_e;
                        g1 += db1[xx] * s_e;
                        g2 += b1[xx] * s_2;
                        g3 += b1[xx] * s_3;
                    }
                    e_i += e;
                    if (!need_grad) return;
                    // r_jk = |d_ik - d_ij| moves with both pair vectors
                    const double q1 = g1 / rij, q2 = g2 / rik, q3 = g3 / rjk;
                    double* gk = g.data() + 3 * ak.p;
                    for (int c = 0; c < 3; ++c) {
                        gj[c] += q1 * dij[c] - q3 * djk[c];
                        gk[c] += q2 * dik[c] + q3 * djk[c];
                    }
                };
                if (all_near) {
                    for (int64_t v = u + 1; v < n_arms; ++v) close(arms[v]);
                } else {
                    // the arms k that may close a triangle, listed without a branch (which of
                    // them do is unpredictable, and a mispredicted branch costs more than the test)
                    int64_t n_near = 0;
                    for (int64_t v = u + 1; v < n_arms; ++v) {
                        const double* dik = vectors + 3 * arms[v].p;
                        const double djk[3] = {dik[0] - dij[0], dik[1] - dij[1], dik[2] - dij[2]};
                        near[n_near] = v;
                        n_near += (djk[0] * djk[0] + djk[1] * djk[1] + djk[2] * djk[2]) < far2;
                    }
                    for (int64_t t = 0; t < n_near; ++t) close(arms[near[t]]);
                }
                if (need_grad)
                    for (int c = 0; c < 3; ++c) g[3 * aj.p + c] = gj[c];
            }
            energies[i] = e_i + (p_.e0 ? p_.e0[si] : 0.0);
        }
    });
    std::fill(energies + n_energy_atoms, energies + n_atoms, 0.0);
    if (forces) pair_forces(x, g.data(), forces, threads_asked);
    if (virial) pair_virials(x, vectors, g.data(), virial, threads_asked);
}

}  // namespace mff
}  // namespace mlff
