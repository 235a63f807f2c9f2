#include "neighbors.hpp"
#include "pool.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif


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

// One neighbouring bin coordinate along a direction: the bin index c and the periodic image q
// through which it is seen (q = 0 along non-periodic directions).
struct BinStep {
    int64_t c;
    int64_t q;
};
// A run of consecutive bins [lo, hi] along the last direction, all seen through image q.
struct BinRun {
    int64_t lo, hi, q;
};

// For every bin b along one direction, the bins b + k, |k| <= reach, wrapped (periodic) or
// clipped (non-periodic), as single steps (T = BinStep) or as runs of consecutive bins sharing
// an image (T = BinRun). Returned flattened: the items of bin b are items[offs[b]:offs[b+1]].
template <typename T>
void build_steps(int64_t nb, int64_t reach, bool periodic, std::vector<int64_t>& offs,
                 std::vector<T>& items) {
    offs.assign(nb + 1, 0);
    items.clear();
    for (int64_t b = 0; b < nb; ++b) {
        for (int64_t k = -reach; k <= reach; ++k) {
            int64_t c = b + k, q = 0;
            if (periodic) {
                q = floor_div(c, nb);
                c -= q * nb;
            } else if (c < 0 || c >= nb) {
                continue;
            }
            if constexpr (std::is_same_v<T, BinRun>) {
                if (!items.empty() && offs[b] < static_cast<int64_t>(items.size()) &&
                    items.back().q == q && items.back().hi + 1 == c) {
                    items.back().hi = c;
                } else {
                    items.push_back({c, c, q});
                }
            } else {
                items.push_back({c, q});
            }
        }
        offs[b + 1] = static_cast<int64_t>(items.size());
    }
}

// Reserve room for `count` pairs. Large buffers are marked for transparent huge pages where
// the kernel supports it: the output is written once, page by page, and 4 KiB page faults
// otherwise cost as much as the search itself for lists of millions of pairs.
template <typename Vec>
void reserve_big(Vec& v, size_t count) {
    v.reserve(count);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const size_t bytes = count * sizeof(typename Vec::value_type);
    const uintptr_t huge = uintptr_t(2) << 20;
    if (bytes >= 2 * huge) {
        const uintptr_t b = reinterpret_cast<uintptr_t>(v.data());
        const uintptr_t a = (b + huge - 1) & ~(huge - 1), e = (b + bytes) & ~(huge - 1);
        if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
    }
#endif
}

// Calls the caller's interrupt check every ~10 ms of search. tick(rows) runs once per atom
// with the number of bin rows that atom visits (counting per row inside the row loop cost
// ~10 % of a 3 Å search); the clock is read every kTicksPerClock rows, and the check
// (in Python: take the GIL, look for Ctrl-C) runs only when enough time has passed.
// Only the thread that called neighbor_list may use it (the check takes that thread's GIL
// state and leaves the KeyboardInterrupt there): threads of the pool never touch it.
class Poller {
public:
    explicit Poller(const InterruptCheck& check)
        : check_(check), next_(check ? kTicksPerClock : std::numeric_limits<int64_t>::max()),
          last_(std::chrono::steady_clock::now()) {}
    bool active() const { return static_cast<bool>(check_); }
    void tick(int64_t rows) {
        ticks_ += rows;
        if (ticks_ >= next_) slow();
    }
    // Checks now if the last check is ~10 ms old (while waiting for other threads).
    void poll() {
        if (active()) slow();
    }

private:
    static constexpr int64_t kTicksPerClock = 4096;
    void slow() {
        next_ = ticks_ + kTicksPerClock;
        const auto now = std::chrono::steady_clock::now();
        if (now - last_ < std::chrono::milliseconds(10)) return;
        last_ = now;
        if (check_()) throw Interrupted();
    }
    const InterruptCheck& check_;
    int64_t ticks_ = 0, next_;
    std::chrono::steady_clock::time_point last_;
};

std::string fmt(const char* format, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, format, v);
    return buf;
}

const char* const kAxis[3] = {"a", "b", "c"};

// "its height along a is 0.001 Å, along b 0.001 Å and along c 7.04 Å": the distances between
// lattice planes, which is what decides how many images a cutoff reaches.
std::string describe_heights(const double* height, const bool* pbc) {
    std::string s;
    int count = 0, total = 0;
    for (int d = 0; d < 3; ++d) total += pbc[d];
    for (int d = 0; d < 3; ++d) {
        if (!pbc[d]) continue;
        s += count == 0 ? "its height along " : (count + 1 == total ? " and along " : ", along ");
        s += std::string(kAxis[d]) + (count == 0 ? " is " : " ") + fmt("%.3g", height[d]) + " Å";
        ++count;
    }
    return s;
}

const char* const kReduceHint =
    "Check the cell; if it is right, describe the same lattice by a reduced cell first, "
    "e.g. atoms.set_cell(atoms.cell.minkowski_reduce()[0]), or use a smaller cutoff.";

// Refuses a periodic cell whose images within the cutoff are too many to visit (see
// SearchLimits::max_images). Needs only the heights, so it answers before any O(n) work.
void check_images(const double* height, const bool* pbc, double cutoff, const SearchLimits& lim) {
    double images = 1.0, reach[3] = {0.0, 0.0, 0.0};
    for (int d = 0; d < 3; ++d) {
        if (!pbc[d]) continue;
        reach[d] = std::ceil(cutoff / height[d]);
        images *= 2.0 * reach[d] + 1.0;
    }
    if (!(images > lim.max_images)) return;
    std::string cells;
    for (int d = 0; d < 3; ++d) {
        if (!pbc[d]) continue;
        cells += (cells.empty() ? "" : " x ") + fmt("%.0f", reach[d]);
    }
    throw std::invalid_argument(
        "the periodic cell is nearly singular or very skewed for this cutoff: " +
        describe_heights(height, pbc) + " (distances between lattice planes), so the " +
        fmt("%g", cutoff) + " Å cutoff reaches " + cells + " cells on either side, " +
        fmt("%.3g", images) + " periodic images in all; the neighbour search refuses more than " +
        fmt("%.0e", lim.max_images) + ". " + kReduceHint);
}

void reserve_output(PairList& out, int64_t pairs) {
    const size_t p = static_cast<size_t>(pairs);
    reserve_big(out.first, p);
    reserve_big(out.second, p);
    reserve_big(out.shifts, 3 * p);
    reserve_big(out.vectors, 3 * p);
    reserve_big(out.distances, p);
}

// What the search reads for atom i, by value. Each chunk of atoms works on its own copy:
// the passes run as tasks of the thread pool, through which everything of neighbor_list they
// use escapes, so that the compiler would otherwise reload it after every store to the
// output (a quarter of the single-thread time).
struct Grid {
    const double *X, *Y, *Z;  // wrapped positions, by sorted slot
    const double* wrapped;    // wrapped positions, by atom
    const int64_t* slot;      // sorted slot of each atom
    const int32_t* bin3;      // bin coordinates of each atom
    const int64_t* start;     // first slot of each bin (and one past the last)
    const int64_t *off0, *off1, *off2;
    const BinStep *st0, *st1;
    const BinRun* runs2;
    Mat3 basis;
    double loose2;
    int64_t nb1, nb2;

    // Visits, for atom i, every candidate slot k of the bins within reach, with the image
    // (q0, q1, q2) through which it is seen; calls f(k, q0, q1, q2, self) for those whose
    // (wrapped) distance is below the loose bound, self telling the atom itself (zero image).
    template <typename F>
    void visit(int64_t i, F&& f) const {
        const double xi = wrapped[3 * i], yi = wrapped[3 * i + 1], zi = wrapped[3 * i + 2];
        const int64_t ki = slot[i];
        const int32_t* bi = &bin3[3 * i];
        for (int64_t a = off0[bi[0]]; a < off0[bi[0] + 1]; ++a) {
            const BinStep s0 = st0[a];
            for (int64_t b = off1[bi[1]]; b < off1[bi[1] + 1]; ++b) {
                const BinStep s1 = st1[b];
                const int64_t row = (s0.c * nb1 + s1.c) * nb2;
                const double px = double(s0.q) * basis[0][0] + double(s1.q) * basis[1][0] - xi;
                const double py = double(s0.q) * basis[0][1] + double(s1.q) * basis[1][1] - yi;
                const double pz = double(s0.q) * basis[0][2] + double(s1.q) * basis[1][2] - zi;
                for (int64_t c = off2[bi[2]]; c < off2[bi[2] + 1]; ++c) {
                    const BinRun r2 = runs2[c];
                    const double dx0 = px + double(r2.q) * basis[2][0];
                    const double dy0 = py + double(r2.q) * basis[2][1];
                    const double dz0 = pz + double(r2.q) * basis[2][2];
                    const int64_t kb = start[row + r2.lo], ke = start[row + r2.hi + 1];
                    const bool zero_image = (s0.q == 0 && s1.q == 0 && r2.q == 0);
                    for (int64_t k = kb; k < ke; ++k) {
                        const double dx = X[k] + dx0, dy = Y[k] + dy0, dz = Z[k] + dz0;
                        const double rr = dx * dx + dy * dy + dz * dz;
                        if (rr < loose2) f(k, s0.q, s1.q, r2.q, zero_image && k == ki);
                    }
                }
            }
        }
    }
    // Bin rows atom i visits: the interrupt check's measure of work.
    int64_t rows(int64_t i) const {
        const int32_t* bi = &bin3[3 * i];
        return (off0[bi[0] + 1] - off0[bi[0]]) * (off1[bi[1] + 1] - off1[bi[1]]);
    }
};

// What pass 2 needs besides the Grid to write the exact pairs, by value (as Grid).
struct Exact {
    const double* orig;    // the caller's positions, by sorted slot
    const int64_t* soff;   // image offsets (position = wrapped + offset . cell), by sorted slot
    const int64_t* order;  // atom at each sorted slot
    Mat3 cell;
    double cut2;
    bool self_interaction;
    int64_t* o_i;
    int64_t* o_j;
    int32_t* o_s;
    double* o_v;
    double* o_d;
};

// The full search shares its work between threads from this many candidate pairs on (the
// estimate checked against SearchLimits::max_candidates): about 0.3 ms of search on one
// thread; fcc copper (a = 3.61 Å) reaches it from ~400 atoms at a 5 Å cutoff, ~1500 at 3 Å.
// Below, waking the pool's workers for the two passes costs about what sharing would save
// (measured on 2 cores: 864-atom fcc at 3 Å, ~0.4 ms, was no faster on 2 threads; 1000-atom
// diamond at 3 Å, ~1.2 ms, took 0.7-0.9 ms).
constexpr double kParallelCandidates = 6e4;
// Chunks of atoms per thread: the threads claim them in turn, so that a thread whose atoms
// have more neighbours than the others' does not hold up the end of a pass.
constexpr int64_t kChunksPerThread = 16;

}  // namespace

PairList neighbor_list(const double* positions, int64_t n, const double* cell_ptr,
                       const bool* pbc, double cutoff, bool self_interaction,
                       const InterruptCheck& interrupted, const SearchLimits& limits,
                       int n_threads) {
    if (!(cutoff > 0.0) || !std::isfinite(cutoff))
        throw std::invalid_argument("cutoff must be a positive finite number");
    const int requested_threads = resolve_threads(n_threads);
    PairList out;
    if (n == 0) return out;

    Mat3 cell;
    for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) {
            cell[a][b] = cell_ptr[3 * a + b];
            if (pbc[a] && !std::isfinite(cell[a][b]))
                throw std::invalid_argument("the cell contains NaN or infinite entries");
        }
    const Mat3 basis = search_basis(cell, pbc);
    const Mat3 inv = inverse(basis);
    // |b_d|, b_d the d-th reciprocal vector of the search basis: along a periodic d,
    // 1 / |b_d| is the cell's height (distance between lattice planes).
    double recip_norm[3], height[3];
    for (int d = 0; d < 3; ++d) {
        recip_norm[d] = std::sqrt(inv[0][d] * inv[0][d] + inv[1][d] * inv[1][d] +
                                  inv[2][d] * inv[2][d]);
        height[d] = 1.0 / recip_norm[d];
    }
    check_images(height, pbc, cutoff, limits);

    // Fractional coordinates in the search basis, wrapped along periodic directions; offset
    // is the integer image an atom was moved back from, wrapped = position - offset . cell.
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
    // non-periodic d they split the atoms' extent [lo, hi]. The bins are about cutoff / fine
    // thick (fine = 1 or 2, 2 when the system is dense) and reach[d] bins on each side
    // cover the cutoff: |Δs_d| <= cutoff |b_d| where b_d is the d-th reciprocal vector.
    double lo[3], span[3], extent[3];
    for (int d = 0; d < 3; ++d) {
        if (pbc[d]) {
            lo[d] = 0.0;
            span[d] = 1.0;
            extent[d] = height[d];
        } else {
            double mn = std::numeric_limits<double>::infinity(), mx = -mn;
            for (int64_t i = 0; i < n; ++i) {
                mn = std::min(mn, frac[3 * i + d]);
                mx = std::max(mx, frac[3 * i + d]);
            }
            lo[d] = mn;
            span[d] = mx - mn;
            extent[d] = span[d] * (1.0 / recip_norm[d]);
        }
    }
    // Expected atoms in a cutoff-sized bin decides how finely to bin: finer bins check fewer
    // candidates but cost more bookkeeping per atom, which only pays when bins stay populated.
    double coarse_bins = 1.0;
    for (int d = 0; d < 3; ++d) coarse_bins *= std::clamp(std::floor(extent[d] / cutoff), 1.0, 1e7);
    const double per_coarse_bin = double(n) / coarse_bins;
    const double fine = per_coarse_bin >= 2.0 ? 2.0 : 1.0;

    int64_t nbins[3], reach[3];
    for (int d = 0; d < 3; ++d) {
        double nb = std::floor(extent[d] * fine / cutoff);
        nbins[d] = static_cast<int64_t>(std::clamp(nb, 1.0, double(1 << 20)));
    }
    // Keep the grid O(n): sparse systems (a molecule far from another) get coarser bins.
    const double max_bins = std::max<double>(64.0, 2.0 * double(n));
    while (double(nbins[0]) * double(nbins[1]) * double(nbins[2]) > max_bins) {
        int dmax = 0;
        for (int d = 1; d < 3; ++d)
            if (nbins[d] > nbins[dmax]) dmax = d;
        nbins[dmax] = std::max<int64_t>(1, nbins[dmax] / 2);
    }
    for (int d = 0; d < 3; ++d) {
        if (pbc[d]) {
            const double x = cutoff * recip_norm[d] * double(nbins[d]);
            reach[d] = static_cast<int64_t>(std::ceil(x * (1.0 + 1e-9) + 1e-9));
        } else if (nbins[d] == 1 || span[d] <= 0.0) {
            reach[d] = 0;
        } else {
            const double x = cutoff * recip_norm[d] * double(nbins[d]) / span[d];
            const double r = std::ceil(x * (1.0 + 1e-9) + 1e-9);
            reach[d] = r >= double(nbins[d] - 1) ? nbins[d] - 1 : static_cast<int64_t>(r);
        }
    }
    const int64_t total_bins = nbins[0] * nbins[1] * nbins[2];

    // Bound the output and the work before allocating either (SearchLimits). The expected
    // pair count assumes a uniform density over the cell (or, along a non-periodic direction,
    // over the atoms' extent, at least 2 cutoffs): clustering only adds pairs, so the estimate
    // does not refuse systems that would fit. The candidates are those of the bins visited;
    // their number also decides below whether the search is worth sharing between threads.
    double est_candidates = 0.0;
    {
        const double dn = double(n);
        const double sphere = 4.0 / 3.0 * 3.14159265358979323846 * cutoff * cutoff * cutoff;
        double volume = std::fabs(dot(basis[0], cross(basis[1], basis[2])));
        double visited = 1.0;
        for (int d = 0; d < 3; ++d) {
            if (!pbc[d]) volume *= std::max(extent[d], 2.0 * cutoff);
            const double steps = 2.0 * double(reach[d]) + 1.0;
            visited *= pbc[d] ? steps : std::min(steps, double(nbins[d]));
        }
        const double pairs = dn * std::min(dn * sphere / volume, dn * visited);
        if (pairs > limits.max_pairs)
            throw std::invalid_argument(
                "about " + fmt("%.2g", pairs) + " pairs are expected within the " +
                fmt("%g", cutoff) + " Å cutoff (" + fmt("%.0f", dn) + " atoms at " +
                fmt("%.3g", dn / volume) + " atoms/Å^3), " + fmt("%.3g", pairs * 60e-9) +
                " GB of output; the neighbour search refuses more than " +
                fmt("%.0e", limits.max_pairs) +
                ". Check that the positions and the cell are in Å, or use a smaller cutoff.");
        const double candidates = dn * visited * (dn / double(total_bins));
        est_candidates = candidates;
        if (candidates > limits.max_candidates)
            throw std::invalid_argument(
                "the neighbour search would test about " + fmt("%.2g", candidates) +
                " candidate pairs to find about " + fmt("%.2g", pairs) +
                " (it refuses more than " + fmt("%.0e", limits.max_candidates) +
                "): " +
                (pbc[0] || pbc[1] || pbc[2]
                     ? "for this cutoff the cell is too thin or too skewed (" +
                           describe_heights(height, pbc) + "). " + kReduceHint
                     : std::string("the atoms are too dense for this cutoff. Check that the "
                                   "positions are in Å, or use a smaller cutoff.")));
    }

    // Counting sort of atoms by bin; per sorted slot k keep the wrapped position (for the
    // search), the caller's position and image offset (for the exact output) and the index.
    std::vector<int32_t> bin3(3 * n);
    std::vector<int64_t> lin(n), start(total_bins + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
        int64_t bb[3];
        for (int d = 0; d < 3; ++d) {
            double u = span[d] > 0.0 ? (frac[3 * i + d] - lo[d]) / span[d] * double(nbins[d]) : 0.0;
            int64_t b = static_cast<int64_t>(std::floor(u));
            bb[d] = std::clamp<int64_t>(b, 0, nbins[d] - 1);
            bin3[3 * i + d] = static_cast<int32_t>(bb[d]);
        }
        lin[i] = (bb[0] * nbins[1] + bb[1]) * nbins[2] + bb[2];
        ++start[lin[i] + 1];
    }
    for (int64_t b = 0; b < total_bins; ++b) start[b + 1] += start[b];
    std::vector<int64_t> order(n), slot(n);
    {
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        for (int64_t i = 0; i < n; ++i) {
            slot[i] = fill[lin[i]]++;
            order[slot[i]] = i;
        }
    }
    std::vector<double> sx_(n), sy_(n), sz_(n), orig(3 * n);
    std::vector<int64_t> soff(3 * n);
    for (int64_t k = 0; k < n; ++k) {
        const int64_t i = order[k];
        sx_[k] = wrapped[3 * i];
        sy_[k] = wrapped[3 * i + 1];
        sz_[k] = wrapped[3 * i + 2];
        for (int d = 0; d < 3; ++d) {
            orig[3 * k + d] = positions[3 * i + d];
            soff[3 * k + d] = offset[3 * i + d];
        }
    }
    std::vector<double>().swap(frac);
    std::vector<int64_t>().swap(lin);

    // Neighbouring bins along each direction, precomputed once per bin coordinate.
    std::vector<int64_t> off0, off1, off2;
    std::vector<BinStep> st0, st1;
    std::vector<BinRun> runs2;
    build_steps(nbins[0], reach[0], pbc[0], off0, st0);
    build_steps(nbins[1], reach[1], pbc[1], off1, st1);
    build_steps(nbins[2], reach[2], pbc[2], off2, runs2);

    const Grid grid{sx_.data(), sy_.data(), sz_.data(), wrapped.data(), slot.data(), bin3.data(),
                    start.data(), off0.data(), off1.data(), off2.data(), st0.data(), st1.data(),
                    runs2.data(), basis, cutoff * cutoff * (1.0 + 1e-9), nbins[1], nbins[2]};

    // Threads. The atoms are cut into n_chunks chunks of consecutive indices; the threads
    // claim chunks in turn, and each chunk's pairs land in their own slice of the output, so
    // the list is the serial one, bit for bit and in the same order, for any number of
    // threads and however they are scheduled. Searches below kParallelCandidates candidate
    // pairs (the estimate checked against max_candidates above) stay on the calling thread.
    // Only the calling thread runs the interrupt check (Poller): it checks while it searches
    // its chunks and, once none is left to claim, while it waits for the other threads; when
    // the check says stop it raises `stop`, which the other threads look at once per atom.
    const int threads = est_candidates >= kParallelCandidates ? requested_threads : 1;
    const int64_t n_chunks =
        threads == 1 ? 1 : std::min<int64_t>(n, kChunksPerThread * int64_t(threads));
    auto chunk_begin = [&](int64_t c) { return n * c / n_chunks; };
    const std::thread::id caller = std::this_thread::get_id();
    Poller poller(interrupted);
    std::atomic<bool> stop{false};

    // Runs body(c, on_caller) once for every chunk c on `threads` threads (pool.hpp). body
    // returns early (with a meaningless result) when it sees `stop`.
    auto run_chunks = [&](auto&& body) {
        std::atomic<int64_t> next{0}, finished{0};
        std::mutex m;
        std::condition_variable all_done;
        parallel_for(threads, threads, [&](int64_t) {
            const bool on_caller = std::this_thread::get_id() == caller;
            try {
                while (!stop.load(std::memory_order_relaxed)) {
                    const int64_t c = next.fetch_add(1);
                    if (c >= n_chunks) break;
                    struct Finish {  // counts the chunk as finished even when body throws
                        std::atomic<int64_t>& finished;
                        std::mutex& m;
                        std::condition_variable& all_done;
                        int64_t n_chunks;
                        ~Finish() {
                            if (finished.fetch_add(1) + 1 == n_chunks) {
                                std::lock_guard<std::mutex> lk(m);
                                all_done.notify_all();
                            }
                        }
                    } finish{finished, m, all_done, n_chunks};
                    body(c, on_caller);
                }
                // Every chunk is claimed: wait for the others' chunks, still checking for an
                // interrupt (parallel_for itself would wait without checking).
                if (on_caller && poller.active()) {
                    std::unique_lock<std::mutex> lk(m);
                    while (!stop.load() && finished.load() < n_chunks) {
                        all_done.wait_for(lk, std::chrono::milliseconds(10));
                        lk.unlock();
                        poller.poll();
                        lk.lock();
                    }
                }
            } catch (...) {
                stop.store(true);  // the other threads give up at their next atom
                throw;             // parallel_for rethrows it once they have
            }
        });
    };

    // Pass 1: per chunk, an upper bound of its number of pairs (loose distance test; every
    // atom meets itself once, in its own bin).
    std::vector<int64_t> at(n_chunks + 1, 0);
    run_chunks([&](int64_t c, bool on_caller) {
        const Grid g = grid;
        const int64_t lo = chunk_begin(c), hi = chunk_begin(c + 1);
        int64_t cnt = 0;
        for (int64_t i = lo; i < hi; ++i) {
            if (on_caller)
                poller.tick(g.rows(i));
            else if (stop.load(std::memory_order_relaxed))
                return;
            g.visit(i, [&](int64_t, int64_t, int64_t, int64_t, bool) { ++cnt; });
        }
        at[c + 1] = self_interaction ? cnt : cnt - (hi - lo);
    });
    for (int64_t c = 0; c < n_chunks; ++c) at[c + 1] += at[c];  // at[c]: where chunk c writes
    const int64_t upper = at[n_chunks];

    // Pass 2: exact vectors from the caller's positions (as filter_pairs computes them), the
    // strict cutoff test on them, written straight into buffers sized by pass 1, each chunk
    // from at[c] on.
    reserve_output(out, upper);
    out.first.resize(upper);
    out.second.resize(upper);
    out.shifts.resize(3 * upper);
    out.vectors.resize(3 * upper);
    out.distances.resize(upper);
    const Exact exact{orig.data(),       soff.data(),         order.data(),
                      cell,              cutoff * cutoff,     self_interaction,
                      out.first.data(),  out.second.data(),   out.shifts.data(),
                      out.vectors.data(), out.distances.data()};
    std::vector<int64_t> written(n_chunks, 0);
    run_chunks([&](int64_t c, bool on_caller) {
        const Grid g = grid;
        const Exact e = exact;
        const int64_t lo = chunk_begin(c), hi = chunk_begin(c + 1);
        int64_t p = at[c];
        for (int64_t i = lo; i < hi; ++i) {
            if (on_caller)
                poller.tick(g.rows(i));
            else if (stop.load(std::memory_order_relaxed))
                return;
            const int64_t ki = g.slot[i];
            const double* ri = &e.orig[3 * ki];
            const int64_t* oi = &e.soff[3 * ki];
            g.visit(i, [&](int64_t k, int64_t q0, int64_t q1, int64_t q2, bool self) {
                if (self && !e.self_interaction) return;
                const int64_t* oj = &e.soff[3 * k];
                const double* rj = &e.orig[3 * k];
                const int32_t S0 = static_cast<int32_t>(q0 - oj[0] + oi[0]);
                const int32_t S1 = static_cast<int32_t>(q1 - oj[1] + oi[1]);
                const int32_t S2 = static_cast<int32_t>(q2 - oj[2] + oi[2]);
                double v[3];
                for (int d = 0; d < 3; ++d)
                    v[d] = rj[d] - ri[d] +
                           (S0 * e.cell[0][d] + S1 * e.cell[1][d] + S2 * e.cell[2][d]);
                const double rr = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
                if (rr >= e.cut2 && !self) return;
                e.o_i[p] = i;
                e.o_j[p] = e.order[k];
                e.o_s[3 * p] = S0;
                e.o_s[3 * p + 1] = S1;
                e.o_s[3 * p + 2] = S2;
                e.o_v[3 * p] = v[0];
                e.o_v[3 * p + 1] = v[1];
                e.o_v[3 * p + 2] = v[2];
                e.o_d[p] = std::sqrt(rr);
                ++p;
            });
        }
        written[c] = p - at[c];
    });

    // The strict test drops the rare pairs the loose one let through (distances within 1e-9
    // of the cutoff): close the gaps they leave between chunks (none with a single chunk).
    int64_t* const o_i = exact.o_i;
    int64_t* const o_j = exact.o_j;
    int32_t* const o_s = exact.o_s;
    double* const o_v = exact.o_v;
    double* const o_d = exact.o_d;
    int64_t p = 0;
    for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t w = written[c];
        if (p != at[c] && w > 0) {
            std::memmove(o_i + p, o_i + at[c], sizeof(int64_t) * w);
            std::memmove(o_j + p, o_j + at[c], sizeof(int64_t) * w);
            std::memmove(o_s + 3 * p, o_s + 3 * at[c], sizeof(int32_t) * 3 * w);
            std::memmove(o_v + 3 * p, o_v + 3 * at[c], sizeof(double) * 3 * w);
            std::memmove(o_d + p, o_d + at[c], sizeof(double) * w);
        }
        p += w;
    }
    out.first.resize(p);
    out.second.resize(p);
    out.shifts.resize(3 * p);
    out.vectors.resize(3 * p);
    out.distances.resize(p);
    return out;
}

std::pair<double, int64_t> closest_pair(const double* positions, int64_t n, const double* cell,
                                        const int64_t* first, const int64_t* second,
                                        const int32_t* shifts, int64_t n_pairs) {
    for (int64_t p = 0; p < n_pairs; ++p)
        if (first[p] < 0 || first[p] >= n || second[p] < 0 || second[p] >= n)
            throw std::invalid_argument("pair index out of range");
    // Chunks of pairs on the thread pool above kParallelPairs pairs, each its own minimum;
    // combined in chunk order, so the answer does not depend on the thread count.
    constexpr int64_t kParallelPairs = 50000;
    const int threads = n_pairs >= kParallelPairs ? resolve_threads(0) : 1;
    std::vector<std::pair<double, int64_t>> best(threads, {std::numeric_limits<double>::infinity(), -1});
    parallel_for(threads, threads, [&](int64_t k) {
        const int64_t lo = n_pairs * k / threads, hi = n_pairs * (k + 1) / threads;
        double d2min = std::numeric_limits<double>::infinity();
        int64_t at = -1;
        for (int64_t p = lo; p < hi; ++p) {
            const int64_t i = first[p], j = second[p];
            const int32_t* S = shifts + 3 * p;
            double rr = 0.0;
            for (int d = 0; d < 3; ++d) {
                const double v = positions[3 * j + d] - positions[3 * i + d] +
                                 (S[0] * cell[d] + S[1] * cell[3 + d] + S[2] * cell[6 + d]);
                rr += v * v;
            }
            if (rr < d2min) {
                d2min = rr;
                at = p;
            }
        }
        best[k] = {d2min, at};
    });
    std::pair<double, int64_t> out = best[0];
    for (int k = 1; k < threads; ++k)
        if (best[k].first < out.first) out = best[k];
    return out;
}

PairList filter_pairs(const double* positions, int64_t n, const double* cell,
                      const int64_t* first, const int64_t* second, const int32_t* shifts,
                      int64_t n_pairs, double cutoff) {
    PairList out;
    const double cut2 = cutoff * cutoff;
    for (int64_t p = 0; p < n_pairs; ++p)
        if (first[p] < 0 || first[p] >= n || second[p] < 0 || second[p] >= n)
            throw std::invalid_argument("pair index out of range");
    // Same expression, in the same order, as neighbor_list: identical vectors bit for bit.
    auto vector_of = [&](int64_t p, double* v) {
        const int64_t i = first[p], j = second[p];
        const int32_t* S = shifts + 3 * p;
        for (int d = 0; d < 3; ++d)
            v[d] = positions[3 * j + d] - positions[3 * i + d] +
                   (S[0] * cell[d] + S[1] * cell[3 + d] + S[2] * cell[6 + d]);
        return v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
    };
    // Chunks of pairs on the thread pool (above kParallelFilter pairs): each counts its kept
    // pairs, then writes them from its offset, so the output is the serial one, in order.
    constexpr int64_t kParallelFilter = 50000;
    const int threads = n_pairs >= kParallelFilter ? resolve_threads(0) : 1;
    std::vector<int64_t> offset(threads + 1, 0);
    auto bounds = [&](int64_t k) { return std::make_pair(n_pairs * k / threads, n_pairs * (k + 1) / threads); };
    parallel_for(threads, threads, [&](int64_t k) {
        auto [lo, hi] = bounds(k);
        int64_t kept = 0;
        double v[3];
        for (int64_t p = lo; p < hi; ++p) kept += vector_of(p, v) < cut2;
        offset[k + 1] = kept;
    });
    for (int k = 0; k < threads; ++k) offset[k + 1] += offset[k];
    const int64_t m = offset[threads];
    reserve_output(out, m);
    out.first.resize(m);
    out.second.resize(m);
    out.shifts.resize(3 * m);
    out.vectors.resize(3 * m);
    out.distances.resize(m);
    parallel_for(threads, threads, [&](int64_t k) {
        auto [lo, hi] = bounds(k);
        int64_t q = offset[k];
        double v[3];
        for (int64_t p = lo; p < hi; ++p) {
            const double rr = vector_of(p, v);
            if (rr >= cut2) continue;
            out.first[q] = first[p];
            out.second[q] = second[p];
            for (int d = 0; d < 3; ++d) {
                out.shifts[3 * q + d] = shifts[3 * p + d];
                out.vectors[3 * q + d] = v[d];
            }
            out.distances[q] = std::sqrt(rr);
            ++q;
        }
    });
    return out;
}

}  // namespace mlff
