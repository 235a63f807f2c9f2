// Reading the model file of `pair_style mlff` and evaluating it with the family cores
// (layout and checks: model_file.hpp).
#include "model_file.hpp"

#include "../bpnn_core.hpp"
#include "../gap_core.hpp"
#include "../mff_core.hpp"
#include "../schnet_core.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace mlff {
namespace plugin {

namespace {

// Bounds of a header: far beyond any real model, small enough that a crafted header cannot
// make the reader allocate much before the data block's size is checked against the file.
constexpr size_t kMaxHeaderLine = 4096;
constexpr int kMaxHeaderLines = 100000;
constexpr int kMaxParts = 65;  // a served model and up to 64 committee members
constexpr int kMaxElements = 118;
constexpr int64_t kMaxCount = int64_t(1) << 36;  // values in one array (512 GiB)

std::runtime_error fail(const std::string& what) { return std::runtime_error(what); }

std::vector<std::string> split(const std::string& line) {
    std::istringstream in(line);
    std::vector<std::string> words;
    for (std::string w; in >> w;) words.push_back(w);
    return words;
}

int64_t to_int(const std::string& word, const std::string& what) {
    size_t used = 0;
    long long v = 0;
    try {
        v = std::stoll(word, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != word.size()) throw fail(what + " is not an integer: '" + word + "'");
    return v;
}

double to_real(const std::string& word, const std::string& what) {
    size_t used = 0;
    double v = 0;
    try {
        v = std::stod(word, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != word.size() || !std::isfinite(v)) throw fail(what + " is not a finite number: '" + word + "'");
    return v;
}

// ---------------------------------------------------------------- families

// Checks that an array has the size its family implies.
void need(size_t have, int64_t want, const char* family, const std::string& name) {
    if (want < 0 || int64_t(have) != want)
        throw fail(std::string(family) + " array '" + name + "' has " + std::to_string(have) + " values, expected " +
                   std::to_string(want));
}

// Every part describes the file's elements, in its order.
void same_species(int64_t have, int64_t want, const char* family) {
    if (have != want)
        throw fail(std::string(family) + " part has " + std::to_string(have) + " species, the file lists " +
                   std::to_string(want) + " elements");
}

int64_t bounded(int64_t v, int64_t lo, int64_t hi, const char* family, const char* what) {
    if (v < lo || v > hi)
        throw fail(std::string(family) + ": " + what + " = " + std::to_string(v) + " is outside [" +
                   std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v;
}

// Behler–Parrinello: the flat arrays of bpnn_core.hpp, float64.
class BpnnPart : public Part {
public:
    BpnnPart(int64_t S, Arrays a) : a_(std::move(a)) {
        const auto& ints = a_.i("ints");
        const auto& reals = a_.d("reals");
        const auto& doubles = a_.d("doubles");
        model_ = bpnn::parse<double>(ints.data(), int64_t(ints.size()), reals.data(), int64_t(reals.size()),
                                     doubles.data(), int64_t(doubles.size()));
        same_species(model_.S, S, "bpnn");
    }
    const char* family() const override { return "bpnn"; }
    double cutoff() const override {
        // the ZBL prior acts out to its inner radius, which may pass the symmetry functions' cutoff
        double c = model_.cutoff;
        if (model_.prior)
            for (int64_t k = 0; k < model_.S * model_.S; ++k) c = std::max(c, model_.inner[k]);
        return c;
    }
    void compute(const Input& in, const Output& out) const override {
        bpnn::compute<double>(model_, in.n_atoms, in.species, in.n_pairs, in.first, in.second, in.vectors,
                              in.n_energy_atoms, in.n_threads, out.energies, out.forces, out.virials);
    }

private:
    Arrays a_;
    bpnn::Model<double> model_;
};

// SchNet: sizes (S, F, H, n_blocks, G), the flat weights of schnet_core.hpp, e0 and scalars
// (inv_h, cutoff, energy_scale, prior width); with a prior also inner (S, S) and atomic_numbers.
class SchnetPart : public Part {
public:
    SchnetPart(int64_t S, Arrays a) : a_(std::move(a)) {
        const auto& sz = a_.i("sizes");
        need(sz.size(), 5, "schnet", "sizes");
        constexpr int64_t big = int64_t(1) << 20;
        auto& L = model_.layout;
        L.S = bounded(sz[0], 1, kMaxElements, "schnet", "species");
        L.F = bounded(sz[1], 1, 1 << 14, "schnet", "features");
        L.H = bounded(sz[2], 1, 1 << 14, "schnet", "hidden units");
        L.n_blocks = bounded(sz[3], 0, 64, "schnet", "interaction blocks");
        L.G = bounded(sz[4], 1, big, "schnet", "table intervals");
        same_species(L.S, S, "schnet");
        need(a_.d("weights").size(), L.size(), "schnet", "weights");
        need(a_.d("e0").size(), S, "schnet", "e0");
        const auto& sc = a_.d("scalars");
        need(sc.size(), 4, "schnet", "scalars");
        model_.weights = a_.d("weights").data();
        model_.inv_h = sc[0], model_.cutoff = sc[1], model_.energy_scale = sc[2];
        if (!(model_.inv_h > 0) || !(model_.cutoff > 0) || std::fabs(L.G / model_.inv_h - model_.cutoff) > 1e-9 * model_.cutoff)
            throw fail("schnet: the filter tables must span [0, cutoff] with G intervals of 1 / inv_h");
        model_.e0 = a_.d("e0").data();
        if (a_.has("inner")) {
            need(a_.d("inner").size(), S * S, "schnet", "inner");
            need(a_.d("atomic_numbers").size(), S, "schnet", "atomic_numbers");
            if (!(sc[3] > 0)) throw fail("schnet: the prior's width must be positive");
            model_.inner = a_.d("inner").data(), model_.atomic_numbers = a_.d("atomic_numbers").data();
            model_.width = sc[3];
        }
    }
    const char* family() const override { return "schnet"; }
    double cutoff() const override {
        double c = model_.cutoff;
        if (model_.inner)
            for (int64_t k = 0; k < model_.layout.S * model_.layout.S; ++k) c = std::max(c, model_.inner[k]);
        return c;
    }
    int hops() const override { return int(std::max<int64_t>(1, model_.layout.n_blocks)); }
    bool evaluates_neighbours() const override { return model_.layout.n_blocks > 1; }
    int64_t halo_width() const override { return model_.layout.n_blocks > 1 ? model_.layout.F : 0; }
    void compute(const Input& in, const Output& out) const override {
        schnet::Input si;
        si.n_atoms = in.n_atoms, si.species = in.species, si.n_pairs = in.n_pairs, si.first = in.first;
        si.second = in.second, si.vectors = in.vectors, si.n_energy_atoms = in.n_energy_atoms;
        si.n_threads = in.n_threads, si.halo = in.halo;
        schnet::Output so;
        so.energies = out.energies, so.forces = out.forces, so.virials = out.virials;
        schnet::compute(model_, si, so);
        // the core gives every atom its energy; only the energy atoms' count here
        for (int64_t k = in.n_energy_atoms; k < in.n_atoms; ++k) out.energies[k] = 0.0;
    }

private:
    Arrays a_;
    schnet::Model<double> model_;
};

// GAP: ints (S, n_max, l_max, G, zeta, sparse_stride, U), sparse_start (S + 1), scalars
// (soap_cutoff, inv_h, delta, pair_cutoff, pair_width, pair_delta, pair_theta) and the arrays of
// gap_core.hpp's Params.
class GapPart : public Part {
public:
    GapPart(int64_t S, Arrays a) : a_(std::move(a)) {
        const auto& n = a_.i("ints");
        need(n.size(), 7, "gap", "ints");
        same_species(n[0], S, "gap");
        gap::Params p;
        p.n_species = int(S);
        p.n_max = int(bounded(n[1], 1, 64, "gap", "n_max"));
        p.l_max = int(bounded(n[2], 0, soap::kMaxL, "gap", "l_max"));
        p.n_intervals = bounded(n[3], 1, int64_t(1) << 24, "gap", "table intervals");
        p.zeta = int(bounded(n[4], 1, 64, "gap", "zeta"));
        p.sparse_stride = bounded(n[5], 1, int64_t(1) << 24, "gap", "sparse_stride");
        p.pair_n_sparse = bounded(n[6], 0, int64_t(1) << 20, "gap", "2-body sparse distances");
        const auto& start = a_.i("sparse_start");
        need(start.size(), S + 1, "gap", "sparse_start");
        for (int64_t s = 0; s < S; ++s)
            if (start[s] < 0 || start[s + 1] < start[s] || start[s + 1] > (int64_t(1) << 28))
                throw fail("gap: sparse_start must start at 0 and not decrease");
        const int64_t M = start[S], K = int64_t(p.n_max) * (p.l_max + 1), keys = S * (S + 1) / 2;
        const auto& sc = a_.d("scalars");
        need(sc.size(), 7, "gap", "scalars");
        p.soap_cutoff = sc[0], p.inv_h = sc[1], p.delta = sc[2];
        p.pair_cutoff = sc[3], p.pair_width = sc[4], p.pair_delta = sc[5], p.pair_theta = sc[6];
        if (!(p.soap_cutoff > 0) || !(p.inv_h > 0)) throw fail("gap: the SOAP cutoff and table spacing must be positive");
        need(a_.d("soap_table").size(), p.n_intervals * 4 * K, "gap", "soap_table");
        need(a_.d("soap_central").size(), p.n_max, "gap", "soap_central");
        need(a_.d("sparse").size(), M * p.sparse_stride, "gap", "sparse");
        need(a_.d("alpha").size(), M, "gap", "alpha");
        need(a_.d("pair_sparse").size(), keys * p.pair_n_sparse, "gap", "pair_sparse");
        need(a_.d("beta").size(), keys * p.pair_n_sparse, "gap", "beta");
        need(a_.d("e0").size(), S, "gap", "e0");
        p.soap_table = a_.d("soap_table").data(), p.soap_central = a_.d("soap_central").data();
        p.sparse_start = start.data(), p.sparse = a_.d("sparse").data(), p.alpha = a_.d("alpha").data();
        p.pair_sparse = a_.d("pair_sparse").data(), p.beta = a_.d("beta").data(), p.e0 = a_.d("e0").data();
        cutoff_ = std::max(p.soap_cutoff, p.pair_n_sparse > 0 ? p.pair_cutoff : 0.0);
        model_ = std::make_unique<gap::Model>(p);
    }
    const char* family() const override { return "gap"; }
    double cutoff() const override { return cutoff_; }
    void compute(const Input& in, const Output& out) const override {
        model_->compute(in.n_atoms, in.species, in.n_pairs, in.first, in.second, in.vectors, in.n_energy_atoms,
                        in.n_threads, out.energies, out.forces, out.virials);
    }

private:
    Arrays a_;
    std::unique_ptr<gap::Model> model_;
    double cutoff_ = 0;
};

// MFF: ints (S, n2, n3, n3jk), scalars (h2, rc2, h3, h3jk, rc3, jk_max) and the tables and
// coefficients of mff_core.hpp (n3 = 0: no 3-body term).
class MffPart : public Part {
public:
    MffPart(int64_t S, Arrays a) : a_(std::move(a)) {
        const auto& n = a_.i("ints");
        need(n.size(), 4, "mff", "ints");
        same_species(n[0], S, "mff");
        mff::Params p;
        p.n_species = S;
        p.n2 = bounded(n[1], 0, 1 << 20, "mff", "2-body intervals");
        p.n3 = bounded(n[2], 0, 1 << 12, "mff", "3-body intervals");
        p.n3jk = bounded(n[3], 0, 1 << 12, "mff", "3-body jk intervals");
        const auto& sc = a_.d("scalars");
        need(sc.size(), 6, "mff", "scalars");
        p.h2 = sc[0], p.rc2 = sc[1], p.h3 = sc[2], p.h3jk = sc[3], p.rc3 = sc[4], p.jk_max = sc[5];
        if (p.n2 > 0) {
            need(a_.d("table2").size(), p.n2 * 16, "mff", "table2");
            need(a_.d("coef2").size(), S * S * (p.n2 + 3), "mff", "coef2");
            p.table2 = a_.d("table2").data(), p.coef2 = a_.d("coef2").data();
        }
        if (p.n3 > 0) {
            if (p.n3jk < 1) throw fail("mff: a 3-body term needs its jk axis");
            need(a_.d("table3").size(), p.n3 * 16, "mff", "table3");
            need(a_.d("table3jk").size(), p.n3jk * 16, "mff", "table3jk");
            need(a_.d("coef3").size(), S * S * S * (p.n3 + 3) * (p.n3 + 3) * (p.n3jk + 3), "mff", "coef3");
            p.table3 = a_.d("table3").data(), p.table3jk = a_.d("table3jk").data(), p.coef3 = a_.d("coef3").data();
        }
        need(a_.d("e0").size(), S, "mff", "e0");
        p.e0 = a_.d("e0").data();
        model_ = std::make_unique<mff::Model>(p);
    }
    const char* family() const override { return "mff"; }
    double cutoff() const override { return model_->cutoff(); }
    void compute(const Input& in, const Output& out) const override {
        model_->compute(in.n_atoms, in.species, in.n_pairs, in.first, in.second, in.vectors, in.n_energy_atoms,
                        in.n_threads, out.energies, out.forces, out.virials);
    }

private:
    Arrays a_;
    std::unique_ptr<mff::Model> model_;
};

}  // namespace

// ---------------------------------------------------------------- arrays, parts, potential

const std::vector<int64_t>& Arrays::i(const std::string& name) const {
    auto it = ints.find(name);
    if (it == ints.end()) throw fail("the model file lacks the int64 array '" + name + "'");
    return it->second;
}

const std::vector<double>& Arrays::d(const std::string& name) const {
    auto it = reals.find(name);
    if (it == reals.end()) throw fail("the model file lacks the float64 array '" + name + "'");
    return it->second;
}

std::unique_ptr<Part> make_part(const std::string& family, int64_t n_species, Arrays arrays) {
    try {
        if (family == "bpnn") return std::make_unique<BpnnPart>(n_species, std::move(arrays));
        if (family == "schnet") return std::make_unique<SchnetPart>(n_species, std::move(arrays));
        if (family == "gap") return std::make_unique<GapPart>(n_species, std::move(arrays));
        if (family == "mff") return std::make_unique<MffPart>(n_species, std::move(arrays));
    } catch (const std::invalid_argument& e) {  // a core's own check of its parameters
        throw fail(family + " parameters: " + e.what());
    }
    throw fail("unknown family '" + family + "' (this plugin serves bpnn, schnet, gap and mff)");
}

int64_t Potential::halo_width() const {
    int64_t w = served ? served->halo_width() : 0;
    for (const auto& m : members) w = std::max(w, m->halo_width());
    return w;
}

double Potential::cutoff() const {
    double c = served ? served->cutoff() : 0.0;
    for (const auto& m : members) c = std::max(c, m->cutoff());
    return c;
}

int Potential::hops() const {
    int h = served ? served->hops() : 1;
    for (const auto& m : members) h = std::max(h, m->hops());
    return h;
}

bool Potential::evaluates_neighbours() const {
    bool e = served && served->evaluates_neighbours();
    for (const auto& m : members) e = e || m->evaluates_neighbours();
    return e;
}

void Potential::compute(const Input& in, const Output& out, double* member_forces) const {
    const int64_t N = in.n_atoms;
    if (served) served->compute(in, out);
    const bool need_members = !served || (member_forces && has_spread());
    if (!need_members) return;
    if (!served) {
        std::fill(out.energies, out.energies + N, 0.0);
        if (out.forces) std::fill(out.forces, out.forces + 3 * N, 0.0);
        if (out.virials) std::fill(out.virials, out.virials + 9 * N, 0.0);
    }
    // scratch for one member: its energies, its forces unless the caller keeps them, its virials
    // when they make the served mean
    std::vector<double> e(N), f(member_forces ? 0 : 3 * N), v(out.virials && !served ? 9 * N : 0);
    const double w = 1.0 / double(members.size());
    for (size_t k = 0; k < members.size(); ++k) {
        double* fk = member_forces ? member_forces + 3 * N * int64_t(k) : f.data();
        members[k]->compute(in, {e.data(), fk, v.empty() ? nullptr : v.data()});
        if (served) continue;
        for (int64_t a = 0; a < N; ++a) out.energies[a] += w * e[a];
        if (out.forces)
            for (int64_t a = 0; a < 3 * N; ++a) out.forces[a] += w * fk[a];
        if (!v.empty())
            for (int64_t a = 0; a < 9 * N; ++a) out.virials[a] += w * v[a];
    }
}

void Potential::force_spread(const double* member_forces, int64_t stride, int64_t n, double* out) const {
    const size_t K = members.size();
    for (int64_t a = 0; a < n; ++a) {
        double mean[3] = {0, 0, 0};
        for (size_t k = 0; k < K; ++k)
            for (int c = 0; c < 3; ++c) mean[c] += member_forces[(int64_t(k) * stride + a) * 3 + c];
        for (int c = 0; c < 3; ++c) mean[c] /= double(K);
        double ss = 0;
        for (size_t k = 0; k < K; ++k)
            for (int c = 0; c < 3; ++c) {
                const double d = member_forces[(int64_t(k) * stride + a) * 3 + c] - mean[c];
                ss += d * d;
            }
        out[a] = K > 1 ? calibration_forces * std::sqrt(ss / double(K - 1)) : 0.0;
    }
}

uint32_t crc32(const unsigned char* data, size_t n, uint32_t crc) {
    static const std::array<uint32_t, 256> table = [] {
        std::array<uint32_t, 256> t{};
        for (uint32_t k = 0; k < 256; ++k) {
            uint32_t c = k;
            for (int b = 0; b < 8; ++b) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[k] = c;
        }
        return t;
    }();
    crc = ~crc;
    for (size_t k = 0; k < n; ++k) crc = table[(crc ^ data[k]) & 0xFFu] ^ (crc >> 8);
    return ~crc;
}

// ---------------------------------------------------------------- reading

namespace {

struct ArrayLine {
    int part;
    std::string name;
    bool is_int;
    int64_t count;
};

struct PartLine {
    std::string family, role;
    bool seen = false;
};

bool read_line(std::istream& in, std::string& line) {
    line.clear();
    char c;
    while (in.get(c)) {
        if (c == '\n') return true;
        if (line.size() >= kMaxHeaderLine) throw fail("a header line is longer than 4096 characters");
        line.push_back(c);
    }
    return !line.empty();
}

}  // namespace

Potential read_potential(const std::string& path) {
    auto where = [&](const std::string& what) { return fail("model file " + path + ": " + what); };
    std::ifstream in(path, std::ios::binary);
    if (!in) throw where("cannot open it");
    in.seekg(0, std::ios::end);
    const auto file_size = static_cast<int64_t>(in.tellg());
    in.seekg(0, std::ios::beg);

    std::string line;
    if (!read_line(in, line) || line != kMagic)
        throw where("not a pair_style mlff model file (write one with `ase-mlff export --lammps MODEL DIR`)");
    Potential pot;
    std::vector<PartLine> parts;
    std::vector<ArrayLine> arrays;
    bool have_format = false, have_crc = false, ended = false;
    uint32_t crc = 0;
    int lines = 1;
    try {
        while (!ended && read_line(in, line)) {
            if (++lines > kMaxHeaderLines) throw fail("the header has too many lines");
            const auto w = split(line);
            if (w.empty()) continue;
            const std::string& key = w[0];
            if (key == "format") {
                if (w.size() != 2) throw fail("'format' takes one number");
                const int64_t f = to_int(w[1], "the format");
                if (f > kFormat)
                    throw fail("format " + std::to_string(f) + " is newer than this plugin reads (" +
                               std::to_string(kFormat) + "): rebuild the plugin with `ase-mlff export --lammps`");
                if (f < 1) throw fail("format " + std::to_string(f) + " is not a format");
                have_format = true;
            } else if (key == "elements") {
                if (w.size() < 2 || w.size() - 1 > size_t(kMaxElements)) throw fail("'elements' needs 1 to 118 symbols");
                pot.elements.assign(w.begin() + 1, w.end());
            } else if (key == "part") {
                if (w.size() != 4) throw fail("'part' takes an index, a family and a role");
                const int64_t k = to_int(w[1], "a part index");
                if (k < 0 || k >= kMaxParts) throw fail("part index " + w[1] + " is out of range");
                if (w[3] != "served" && w[3] != "member") throw fail("part role must be served or member, got " + w[3]);
                if (size_t(k) >= parts.size()) parts.resize(size_t(k) + 1);
                if (parts[size_t(k)].seen) throw fail("part " + w[1] + " is declared twice");
                parts[size_t(k)] = {w[2], w[3], true};
            } else if (key == "calibration_forces") {
                if (w.size() != 2) throw fail("'calibration_forces' takes one number");
                pot.calibration_forces = to_real(w[1], "calibration_forces");
                if (!(pot.calibration_forces > 0)) throw fail("calibration_forces must be positive");
            } else if (key == "array") {
                if (w.size() != 5) throw fail("'array' takes a part, a name, a type and a count");
                ArrayLine a;
                a.part = int(to_int(w[1], "an array's part"));
                a.name = w[2];
                if (w[3] != "i64" && w[3] != "f64") throw fail("array type must be i64 or f64, got " + w[3]);
                a.is_int = w[3] == "i64";
                a.count = to_int(w[4], "an array's count");
                if (a.count < 0 || a.count > kMaxCount) throw fail("array " + a.name + " has a bad count " + w[4]);
                arrays.push_back(a);
            } else if (key == "crc32") {
                if (w.size() != 2) throw fail("'crc32' takes one hexadecimal number");
                size_t used = 0;
                unsigned long v = 0;
                try {
                    v = std::stoul(w[1], &used, 16);
                } catch (const std::exception&) {
                    used = 0;
                }
                if (used != w[1].size() || v > 0xFFFFFFFFul) throw fail("bad crc32 '" + w[1] + "'");
                crc = uint32_t(v);
                have_crc = true;
            } else if (key == "info") {
                // provenance for people: ignored
            } else if (key == "end") {
                ended = true;
            } else {
                throw fail("unknown header keyword '" + key + "'");
            }
        }
        if (!ended) throw fail("the header has no 'end' line (truncated?)");
        if (!have_format) throw fail("the header has no 'format' line");
        if (!have_crc) throw fail("the header has no 'crc32' line");
        if (pot.elements.empty()) throw fail("the header has no 'elements' line");
        if (parts.empty()) throw fail("the file has no parts");
        for (size_t k = 0; k < parts.size(); ++k)
            if (!parts[k].seen) throw fail("part " + std::to_string(k) + " is missing");
    } catch (const std::runtime_error& e) {
        throw where(std::string("bad header: ") + e.what());
    }

    // the data block must be exactly what the arrays declare: nothing is allocated before this
    const int64_t data_start = static_cast<int64_t>(in.tellg());
    int64_t total = 0;
    for (const auto& a : arrays) {
        if (a.part < 0 || size_t(a.part) >= parts.size())
            throw where("array " + a.name + " belongs to part " + std::to_string(a.part) + ", which is not declared");
        total += 8 * a.count;
        if (total > file_size) break;
    }
    if (data_start < 0 || total != file_size - data_start)
        throw where("the data block holds " + std::to_string(file_size - data_start) + " bytes, the header declares " +
                    std::to_string(total) + " (truncated or damaged file)");

    std::vector<Arrays> part_arrays(parts.size());
    uint32_t sum = 0;
    for (const auto& a : arrays) {
        Arrays& pa = part_arrays[size_t(a.part)];
        if (pa.has(a.name)) throw where("array " + a.name + " of part " + std::to_string(a.part) + " appears twice");
        const size_t bytes = size_t(8 * a.count);
        unsigned char* dst;
        if (a.is_int) {
            auto& v = pa.ints[a.name];
            v.resize(size_t(a.count));
            dst = reinterpret_cast<unsigned char*>(v.data());
        } else {
            auto& v = pa.reals[a.name];
            v.resize(size_t(a.count));
            dst = reinterpret_cast<unsigned char*>(v.data());
        }
        if (bytes && !in.read(reinterpret_cast<char*>(dst), std::streamsize(bytes)))
            throw where("reading array " + a.name + " failed (truncated file)");
        sum = crc32(dst, bytes, sum);
    }
    if (sum != crc) throw where("the data block's checksum does not match its header (damaged file)");
    for (auto& pa : part_arrays)
        for (auto& kv : pa.reals)
            for (double x : kv.second)
                if (!std::isfinite(x)) throw where("array " + kv.first + " holds a value that is not finite");

    const int64_t S = int64_t(pot.elements.size());
    for (size_t k = 0; k < parts.size(); ++k) {
        std::unique_ptr<Part> part;
        try {
            part = make_part(parts[k].family, S, std::move(part_arrays[k]));
        } catch (const std::runtime_error& e) {
            throw where("part " + std::to_string(k) + ": " + e.what());
        }
        if (parts[k].role == "served") {
            if (pot.served) throw where("more than one served part");
            pot.served = std::move(part);
        } else {
            pot.members.push_back(std::move(part));
        }
    }
    if (!pot.served && pot.members.empty()) throw where("nothing to serve");
    return pot;
}

}  // namespace plugin
}  // namespace mlff
