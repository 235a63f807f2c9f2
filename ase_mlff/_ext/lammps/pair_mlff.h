// LAMMPS pair style `mlff`: ase-mlff models (GAP, Behler–Parrinello, SchNet, MFF and committees
// of them) served by the package's compiled cores, as a plugin (`plugin load mlffplugin.so`).
//
//   pair_style mlff [threads N] [ghosts]
//   pair_coeff * * MODEL_FILE El_1 El_2 ... El_ntypes
//
// MODEL_FILE is written by `ase-mlff export --lammps MODEL DIR` (layout: model_file.hpp); the
// elements map LAMMPS atom types 1 .. ntypes to the model's elements. Units metal; newton pair
// on; float64 throughout. Per-atom energies include the per-element reference energies, so
// `pe` is the energy the ASE calculator reports.
//
// Committees: the served energy (the file's served model, or the members' mean) moves the
// atoms, and the calibrated spread of the members' forces on each atom (eV/Å) is the per-atom
// quantity "uncertainty", e.g. `fix unc all pair 10 mlff uncertainty 1` (dump f_unc, reduce
// it with `compute reduce max f_unc`, or stop a run with `fix halt`).
//
// Message passing (SchNet with n interaction blocks of cutoff r_c): an owned atom's energy
// depends on atoms up to n r_c away. By default the blocks exchange a halo: after each block's
// in2f output is computed, LAMMPS' forward communication copies the owners' rows to their
// ghosts, and in the backward pass its reverse communication adds the ghosts' gradients to
// their owners; the ghost shell stays one cutoff (plus skin) and each atom's network runs on
// one rank. With `ghosts` the style instead asks for ghost atoms out to n r_c + skin (raising
// `comm_modify cutoff`) with neighbour lists, folds ghosts that are images of owned atoms onto
// them, and evaluates the other ranks' atoms within n hops itself (no communication inside the
// step, more work per rank). Both give the same numbers. Ghosts that are periodic images of an
// atom the rank owns are folded onto it in both modes (with `atom_modify map`): on a single rank
// that is every ghost, the graph is exactly the periodic one and nothing is exchanged.
#pragma once

#include "pair.h"

#include <memory>
#include <string>
#include <vector>

namespace mlff {
namespace plugin {
class Potential;
}
}  // namespace mlff

namespace LAMMPS_NS {

class PairMLFF : public Pair {
public:
    explicit PairMLFF(class LAMMPS* lmp);
    ~PairMLFF() override;

    void compute(int eflag, int vflag) override;
    void settings(int narg, char** arg) override;
    void coeff(int narg, char** arg) override;
    void init_style() override;
    double init_one(int i, int j) override;
    void* extract(const char* name, int& dim) override;
    void* extract_peratom(const char* name, int& ncol) override;
    int pack_forward_comm(int n, int* list, double* buf, int pbc_flag, int* pbc) override;
    void unpack_forward_comm(int n, int first, double* buf) override;
    int pack_reverse_comm(int n, int first, double* buf) override;
    void unpack_reverse_comm(int n, int* list, double* buf) override;
    double memory_usage() override;

private:
    std::unique_ptr<mlff::plugin::Potential> pot_;
    std::string model_path_;
    std::vector<int> type_species_;  // LAMMPS type (1 .. ntypes) -> species index of the model
    double cut_ = 0.0;
    int n_threads_ = 1;
    int spread_flag_ = 0;  // fix pair's trigger (the spread is computed every step anyway)
    bool ghost_shell_ = false;  // message passing through a deep ghost shell instead of a halo exchange
    // the per-atom rows (comm_width_ values each) that the next communication moves
    double* comm_rows_ = nullptr;
    int comm_width_ = 0;
    bool comm_by_node_ = false;  // rows indexed by graph node (halo exchange), else by atom
    double* comm_row(int atom_index, bool receiving);

    // per call, kept between calls to avoid reallocation
    std::vector<int64_t> species_, first_, second_;
    std::vector<int> node_of_atom_, atom_of_node_;
    std::vector<double> vectors_, energies_, forces_, virials_, member_forces_;
    // per atom: members' forces (K x 3 each) for the reverse communication; the spread
    std::vector<double> atom_member_forces_, spread_;
    int n_members_ = 0;

    void build_graph(int64_t& n_nodes);
    void prune_graph(int64_t& n_nodes);
};

}  // namespace LAMMPS_NS
