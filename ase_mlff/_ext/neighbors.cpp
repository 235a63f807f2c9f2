#include "neighbors.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace mlff {
namespace {

using Vec3 = std::array<double, 3>;
using Mat3 = std::array<Vec3, 3>;

Vec3 cross(const Vec3& a, const Vec3& b) {
    return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}
double dot(const Vec3& a, const Vec3& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
double norm(const Vec3& a) { return std::sqrt(dot(a, a)); }
Vec3 scaled(const Vec3& a, double s) { return {a[0] * s, a[1] * s, a[2] * s}; }

// Unit vector orthogonal to a (a != 0).
Vec3 any_orthogonal(const Vec3& a) {
    int k = 0;  // axis least aligned with a
    for (int d = 1; d < 3; ++d)
        if (std::fabs(a[d]) < std::fabs(a[k])) k = d;
    Vec3 e{0.0, 0.0, 0.0};
    e[k] = 1.0;
    Vec3 u = cross(a, e);
    return scaled(u, 1.0 / norm(u));
}

// Inverse of a 3x3 matrix given as rows; throws if singular.
Mat3 inverse(const Mat3& m) {
    Vec3 c0 = cross(m[1], m[2]), c1 = cross(m[2], m[0]), c2 = cross(m[0], m[1]);
    double det = dot(m[0], c0);
    if (det == 0.0 || !std::isfinite(det)) throw std::invalid_argument("singular search basis");
    // (m^-1)[k][d] = c_d[k] / det, so that  r . m^-1 = fractional coordinates.
    Mat3 inv;
    for (int k = 0; k < 3; ++k) {
        inv[k][0] = c0[k] / det;
        inv[k][1] = c1[k] / det;
        inv[k][2] = c2[k] / det;
    }
    return inv;
}

int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
    return q;
}

// Basis whose periodic rows are the cell vectors and whose other rows are orthonormal to them.
Mat3 search_basis(const Mat3& cell, const bool* pbc) {
    int periodic[3], n_per = 0, free_dims[3], n_free = 0;
    for (int d = 0; d < 3; ++d) (pbc[d] ? periodic[n_per++] : free_dims[n_free++]) = d;

    const char* names[3] = {"a", "b", "c"};
    for (int p = 0; p < n_per; ++p) {
        const Vec3& v = cell[periodic[p]];
        if (!(norm(v) > 0.0) || !std::isfinite(norm(v)))
            throw std::invalid_argument(std::string("cell vector ") + names[periodic[p]] +
                                        " is zero or not finite but that direction is periodic");
    }
    Mat3 basis{};
    for (int p = 0; p < n_per; ++p) basis[periodic[p]] = cell[periodic[p]];

    if (n_per == 0) {
        basis[0] = {1, 0, 0};
        basis[1] = {0, 1, 0};
        basis[2] = {0, 0, 1};
    } else if (n_per == 1) {
        const Vec3& a = cell[periodic[0]];
        Vec3 u = any_orthogonal(a);
        Vec3 w = cross(a, u);
        w = scaled(w, 1.0 / norm(w));
        basis[free_dims[0]] = u;
        basis[free_dims[1]] = w;
    } else if (n_per == 2) {
        const Vec3& a = cell[periodic[0]];
        const Vec3& b = cell[periodic[1]];
        Vec3 n = cross(a, b);
        double nn = norm(n);
        if (!(nn > 1e-12 * norm(a) * norm(b)))
            throw std::invalid_argument("the two periodic cell vectors are parallel");
        basis[free_dims[0]] = scaled(n, 1.0 / nn);
    } else {
        double vol = dot(cell[0], cross(cell[1], cell[2]));
        if (!(std::fabs(vol) > 1e-12 * norm(cell[0]) * norm(cell[1]) * norm(cell[2])))
            throw std::invalid_argument("the periodic cell has zero volume (singular cell)");
    }
    return basis;
}

}  // namespace

PairList neighbor_list(const double* positions, int64_t n, const double* cell_ptr,
                       const bool* pbc, double cutoff, bool self_interaction) {
    if (!(cutoff > 0.0) || !std::isfinite(cutoff))
        throw std::invalid_argument("cutoff must be a positive finite number");
    PairList out;
    if (n == 0) return out;

    Mat3 cell;
    for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) cell[a][b] = cell_ptr[3 * a + b];
    const Mat3 basis = search_basis(cell, pbc);
    const Mat3 inv = inverse(basis);

    // Fractional coordinates in the search basis, wrapped along periodic directions.
    std::vector<double> frac(3 * n), wrapped(3 * n);
    std::vector<int64_t> offset(3 * n, 0);
    for (int64_t i = 0; i < n; ++i) {
        const double* r = positions + 3 * i;
        for (int d = 0; d < 3; ++d) {
            double s = r[0] * inv[0][d] + r[1] * inv[1][d] + r[2] * inv[2][d];
            if (!std::isfinite(s)) throw std::invalid_argument("positions must be finite");
            if (pbc[d]) {
                double f = std::floor(s);
                if (std::fabs(f) > 1e9)
                    throw std::invalid_argument(
                        "an atom lies more than 1e9 cell lengths outside the periodic cell");
                offset[3 * i + d] = static_cast<int64_t>(f);
                s -= f;
            }
            frac[3 * i + d] = s;
        }
        for (int d = 0; d < 3; ++d) {
            double w = r[d];
            for (int e = 0; e < 3; ++e)
                if (pbc[e]) w -= static_cast<double>(offset[3 * i + e]) * cell[e][d];
            wrapped[3 * i + d] = w;
        }
    }

    // Bin grid. Along periodic d the bins split [0,1) of the fractional coordinate; along a
    // non-periodic d they split the atoms' extent [lo, hi]. reach[d] bins on each side cover
    // the cutoff: |Δs_d| <= cutoff |b_d| where b_d is the d-th reciprocal vector.
    double lo[3], span[3], recip_norm[3];
    int64_t nbins[3], reach[3];
    for (int d = 0; d < 3; ++d) {
        recip_norm[d] = std::sqrt(inv[0][d] * inv[0][d] + inv[1][d] * inv[1][d] +
                                  inv[2][d] * inv[2][d]);
        double extent;
        if (pbc[d]) {
            lo[d] = 0.0;
            span[d] = 1.0;
            extent = 1.0 / recip_norm[d];  // distance between lattice planes
        } else {
            double mn = std::numeric_limits<double>::infinity(), mx = -mn;
            for (int64_t i = 0; i < n; ++i) {
                mn = std::min(mn, frac[3 * i + d]);
                mx = std::max(mx, frac[3 * i + d]);
            }
            lo[d] = mn;
            span[d] = mx - mn;
            extent = span[d] * (1.0 / recip_norm[d]);
        }
        double nb = std::floor(extent / cutoff);
        nbins[d] = static_cast<int64_t>(std::clamp(nb, 1.0, double(1 << 20)));
    }
    auto compute_reach = [&](int d) {
        if (pbc[d]) {
            reach[d] = static_cast<int64_t>(
                std::ceil(cutoff * recip_norm[d] * double(nbins[d]) * (1.0 + 1e-10)));
        } else if (nbins[d] == 1 || span[d] <= 0.0) {
            reach[d] = 0;
        } else {
            double r = std::ceil(cutoff * recip_norm[d] * double(nbins[d]) / span[d] * (1.0 + 1e-10));
            reach[d] = std::min<int64_t>(static_cast<int64_t>(r), nbins[d] - 1);
        }
    };
    // Keep the grid O(n): sparse systems (a molecule far from another) get coarser bins.
    const double max_bins = std::max<double>(64.0, 2.0 * double(n));
    while (double(nbins[0]) * double(nbins[1]) * double(nbins[2]) > max_bins) {
        int dmax = 0;
        for (int d = 1; d < 3; ++d)
            if (nbins[d] > nbins[dmax]) dmax = d;
        nbins[dmax] = std::max<int64_t>(1, nbins[dmax] / 2);
    }
    for (int d = 0; d < 3; ++d) compute_reach(d);
    const int64_t total_bins = nbins[0] * nbins[1] * nbins[2];

    // Counting sort of atoms by bin.
    std::vector<int64_t> bin_of(3 * n), lin(n), start(total_bins + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
        for (int d = 0; d < 3; ++d) {
            double u = span[d] > 0.0 ? (frac[3 * i + d] - lo[d]) / span[d] * double(nbins[d]) : 0.0;
            int64_t b = static_cast<int64_t>(std::floor(u));
            bin_of[3 * i + d] = std::clamp<int64_t>(b, 0, nbins[d] - 1);
        }
        lin[i] = (bin_of[3 * i] * nbins[1] + bin_of[3 * i + 1]) * nbins[2] + bin_of[3 * i + 2];
        ++start[lin[i] + 1];
    }
    for (int64_t b = 0; b < total_bins; ++b) start[b + 1] += start[b];
    std::vector<int64_t> order(n), fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) order[fill[lin[i]]++] = i;
    std::vector<double> sorted_pos(3 * n);
    for (int64_t k = 0; k < n; ++k)
        for (int d = 0; d < 3; ++d) sorted_pos[3 * k + d] = wrapped[3 * order[k] + d];

    const double cut2 = cutoff * cutoff;
    const double loose2 = cut2 * (1.0 + 1e-9);
    out.first.reserve(static_cast<size_t>(n) * 16);
    out.second.reserve(static_cast<size_t>(n) * 16);

    for (int64_t i = 0; i < n; ++i) {
        const double xi = wrapped[3 * i], yi = wrapped[3 * i + 1], zi = wrapped[3 * i + 2];
        const int64_t* bi = &bin_of[3 * i];
        for (int64_t k0 = -reach[0]; k0 <= reach[0]; ++k0) {
            int64_t c0 = bi[0] + k0, q0 = 0;
            if (pbc[0]) { q0 = floor_div(c0, nbins[0]); c0 -= q0 * nbins[0]; }
            else if (c0 < 0 || c0 >= nbins[0]) continue;
            for (int64_t k1 = -reach[1]; k1 <= reach[1]; ++k1) {
                int64_t c1 = bi[1] + k1, q1 = 0;
                if (pbc[1]) { q1 = floor_div(c1, nbins[1]); c1 -= q1 * nbins[1]; }
                else if (c1 < 0 || c1 >= nbins[1]) continue;
                for (int64_t k2 = -reach[2]; k2 <= reach[2]; ++k2) {
                    int64_t c2 = bi[2] + k2, q2 = 0;
                    if (pbc[2]) { q2 = floor_div(c2, nbins[2]); c2 -= q2 * nbins[2]; }
                    else if (c2 < 0 || c2 >= nbins[2]) continue;
                    const double sx = q0 * basis[0][0] + q1 * basis[1][0] + q2 * basis[2][0] - xi;
                    const double sy = q0 * basis[0][1] + q1 * basis[1][1] + q2 * basis[2][1] - yi;
                    const double sz = q0 * basis[0][2] + q1 * basis[1][2] + q2 * basis[2][2] - zi;
                    const bool zero_image = (q0 == 0 && q1 == 0 && q2 == 0);
                    const int64_t b = (c0 * nbins[1] + c1) * nbins[2] + c2;
                    for (int64_t k = start[b]; k < start[b + 1]; ++k) {
                        const double dx = sorted_pos[3 * k] + sx;
                        const double dy = sorted_pos[3 * k + 1] + sy;
                        const double dz = sorted_pos[3 * k + 2] + sz;
                        const double r2 = dx * dx + dy * dy + dz * dz;
                        if (r2 >= loose2) continue;
                        const int64_t j = order[k];
                        if (j == i && zero_image && !self_interaction) continue;
                        // Exact vector from the caller's positions, as filter_pairs computes it.
                        int32_t S[3] = {0, 0, 0};
                        const int64_t q[3] = {q0, q1, q2};
                        for (int d = 0; d < 3; ++d)
                            if (pbc[d]) S[d] = static_cast<int32_t>(q[d] - offset[3 * j + d] + offset[3 * i + d]);
                        double v[3];
                        for (int d = 0; d < 3; ++d)
                            v[d] = positions[3 * j + d] - positions[3 * i + d] +
                                   (S[0] * cell[0][d] + S[1] * cell[1][d] + S[2] * cell[2][d]);
                        const double rr = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
                        if (rr >= cut2 && !(self_interaction && j == i && zero_image)) continue;
                        out.first.push_back(i);
                        out.second.push_back(j);
                        out.shifts.insert(out.shifts.end(), {S[0], S[1], S[2]});
                        out.vectors.insert(out.vectors.end(), {v[0], v[1], v[2]});
                        out.distances.push_back(std::sqrt(rr));
                    }
                }
            }
        }
    }
    return out;
}

PairList filter_pairs(const double* positions, int64_t n, const double* cell,
                      const int64_t* first, const int64_t* second, const int32_t* shifts,
                      int64_t n_pairs, double cutoff) {
    PairList out;
    const double cut2 = cutoff * cutoff;
    out.first.reserve(n_pairs);
    out.second.reserve(n_pairs);
    out.shifts.reserve(3 * n_pairs);
    out.vectors.reserve(3 * n_pairs);
    out.distances.reserve(n_pairs);
    for (int64_t p = 0; p < n_pairs; ++p) {
        const int64_t i = first[p], j = second[p];
        if (i < 0 || i >= n || j < 0 || j >= n) throw std::invalid_argument("pair index out of range");
        const int32_t* S = shifts + 3 * p;
        double v[3];
        for (int d = 0; d < 3; ++d)
            v[d] = positions[3 * j + d] - positions[3 * i + d] +
                   (S[0] * cell[d] + S[1] * cell[3 + d] + S[2] * cell[6 + d]);
        const double rr = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
        if (rr >= cut2) continue;
        out.first.push_back(i);
        out.second.push_back(j);
        out.shifts.insert(out.shifts.end(), {S[0], S[1], S[2]});
        out.vectors.insert(out.vectors.end(), {v[0], v[1], v[2]});
        out.distances.push_back(std::sqrt(rr));
    }
    return out;
}

}  // namespace mlff
