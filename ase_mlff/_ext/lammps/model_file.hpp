// The model file of LAMMPS' `pair_style mlff` and the potential it describes. Plain C++ (no
// LAMMPS, no Python): the pair style (pair_mlff.cpp) reads a file with read_potential() and
// calls Potential::compute() with its atoms and pairs.
//
// File layout (written by ase_mlff/export/plugin.py; all numbers little-endian):
//
//   ase-mlff pair_style mlff model           first line, exactly
//   format 1                                  the layout version (a newer one is refused)
//   elements H O                              element of each species index, in order
//   part 0 bpnn served                        one line per part: index, family, role
//   part 1 bpnn member                          (role: served = the energy LAMMPS integrates;
//   calibration_forces 1.7                       member = a committee member, used for the spread)
//   array 0 ints i64 123                      one line per array: part, name, type, count
//   array 0 reals f64 4567
//   crc32 1a2b3c4d                            CRC-32 (the zlib polynomial) of the data block
//   info <anything>                           ignored (provenance: source file, date, version)
//   end
//   <data block: the arrays' values in the order of their lines, 8 bytes each>
//
// A file with no served part serves the mean of its members. Reading checks, before allocating
// anything, that the header is well formed and bounded, that the data block is exactly as long
// as the arrays declare and that its checksum matches; each family then checks its arrays'
// sizes against the sizes they imply. Every problem is a std::runtime_error naming it.
#pragma once

#include "../schnet_core.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace mlff {
namespace plugin {

constexpr int kFormat = 1;
constexpr const char* kMagic = "ase-mlff pair_style mlff model";

// The arrays of one part, by name (int64 and float64 kept apart).
struct Arrays {
    std::map<std::string, std::vector<int64_t>> ints;
    std::map<std::string, std::vector<double>> reals;

    const std::vector<int64_t>& i(const std::string& name) const;  // throws naming a missing array
    const std::vector<double>& d(const std::string& name) const;
    bool has(const std::string& name) const { return ints.count(name) || reals.count(name); }
};

// What one pair list asks of a part (pair_reduce.hpp's conventions): atoms 0 .. n_energy_atoms-1
// are those whose energies count, the others (ghosts) are neighbours only.
struct Input {
    int64_t n_atoms = 0;
    const int64_t* species = nullptr;
    int64_t n_pairs = 0;
    const int64_t* first = nullptr;
    const int64_t* second = nullptr;
    const double* vectors = nullptr;  // (n_pairs, 3) r_second - r_first
    int64_t n_energy_atoms = 0;
    int n_threads = 1;
    const schnet::Halo* halo = nullptr;  // message passing by exchange between blocks (schnet_core.hpp)
};

// Per-atom results (n_atoms rows each); forces / virials may be null.
struct Output {
    double* energies = nullptr;  // eV, reference energies included; atoms >= n_energy_atoms: 0
    double* forces = nullptr;    // (n_atoms, 3) eV/Å, -dE/dr of the energy atoms' energies
    double* virials = nullptr;   // (n_atoms, 3, 3) eV, sum over the atom's pairs of d (x) dE/dd
};

// One model of a family, evaluated by its compiled serving core.
class Part {
public:
    virtual ~Part() = default;
    virtual const char* family() const = 0;
    // distance beyond which a pair adds nothing (Å)
    virtual double cutoff() const = 0;
    // hops of message passing: an atom's energy depends on atoms up to hops() * cutoff() away
    virtual int hops() const { return 1; }
    // true for message passing: without a halo exchange, atoms beyond n_energy_atoms must be
    // evaluated too (out to hops() * cutoff())
    virtual bool evaluates_neighbours() const { return false; }
    // width of the rows a halo exchange moves (0: the part needs none)
    virtual int64_t halo_width() const { return 0; }
    virtual void compute(const Input& in, const Output& out) const = 0;
};

// Builds a part of `family` from its arrays (n_species from the file's element list).
std::unique_ptr<Part> make_part(const std::string& family, int64_t n_species, Arrays arrays);

// What a model file describes: the served model (or the mean of the members) and the members.
class Potential {
public:
    std::vector<std::string> elements;          // species index -> element symbol
    std::unique_ptr<Part> served;               // null: the members' mean is served
    std::vector<std::unique_ptr<Part>> members;
    double calibration_forces = 1.0;            // factor of the members' force spread

    double cutoff() const;
    int hops() const;
    bool evaluates_neighbours() const;
    int64_t halo_width() const;
    bool has_spread() const { return members.size() >= 2; }

    // Served energies, forces and per-atom virials; when `spread` is not null and the file has
    // members, also each member's forces into member_forces ((K, n_atoms, 3), caller's buffer
    // of K * n_atoms * 3 doubles) for the spread (which needs the owners' complete forces, so
    // the host sums ghosts first; see force_spread).
    void compute(const Input& in, const Output& out, double* member_forces) const;

    // Calibrated spread c_F sqrt(1/(K-1) sum_k |F_k - Fbar|^2) of n atoms from member forces
    // laid out (K, stride, 3), atoms 0 .. n-1 of each member's block.
    void force_spread(const double* member_forces, int64_t stride, int64_t n, double* out) const;
};

// Reads and checks a model file (std::runtime_error naming the file and the problem).
Potential read_potential(const std::string& path);

// CRC-32 (reflected, polynomial 0xEDB88320, as zlib) of n bytes, continuing from crc.
uint32_t crc32(const unsigned char* data, size_t n, uint32_t crc = 0);

}  // namespace plugin
}  // namespace mlff
