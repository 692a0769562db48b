"""The process group: MPI (through mpi4py) under mpiexec, a single process otherwise.

Training meets it in a few places only: the flat gradient buffer (one in-place Allreduce per
step), a two-number Allreduce per step (the loss and the stop flag), the evaluation sums, the
broadcast of rank 0's state at the start, and a parameter checksum at each evaluation. Without
mpiexec, mpi4py is never imported.
"""
import hashlib
import os

import numpy as np

# set by the launchers of MPICH/Hydra (PMI), Open MPI, PMIx and MVAPICH for every rank
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
_LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


def launched_size() -> int:
    """How many ranks the launcher started (1 without one), read from its environment."""
    for name in _SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def local_size() -> int:
    """How many ranks share this machine (1 without a launcher)."""
    for name in _LOCAL_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return max(1, int(os.environ[name]))
    return 1


class RanksDiverged(RuntimeError):
    """The ranks' parameters differ: raised on every rank at once."""


def fair_share_of_cpus() -> int:
    """The CPUs this process may run on (its affinity), divided among the ranks started on this
    machine; at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) // local_size())


class SingleProcess:
    """The group of one: every collective is the identity."""
    rank, size = 0, 1

    def allreduce_sum(self, array):
        """Sum ``array`` over the ranks, in place."""

    def broadcast(self, array):
        """Overwrite ``array`` with rank 0's, in place."""

    def broadcast_object(self, value):
        """Rank 0's value (any picklable object: here only bytes and plain data)."""
        return value

    def check_same_parameters(self, params, step):
        """Raise RanksDiverged if the ranks' parameters differ."""

    def abort(self, code):
        raise SystemExit(code)


class MPIGroup:
    """The ranks of MPI.COMM_WORLD."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError as err:
            raise RuntimeError(
                f"started by mpiexec with {launched_size()} ranks, but mpi4py cannot be "
                f"imported ({err}); install it with: pip install 'tinygpt[mpi]'") from None
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def allreduce_sum(self, array):
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)

    def broadcast(self, array):
        self.comm.Bcast(array, root=0)

    def broadcast_object(self, value):
        return self.comm.bcast(value, root=0)

    def check_same_parameters(self, params, step):
        digest = hashlib.sha256(np.ascontiguousarray(params).tobytes()).hexdigest()
        digests = self.comm.allgather(digest)
        differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if differing:
            raise RanksDiverged(f"ranks {differing} hold parameters that differ from rank 0's at "
                               f"step {step}: the ranks have diverged; stopping")

    def abort(self, code):
        self.comm.Abort(code)


_group = None


def group():
    """The process group of this process: MPIGroup under an MPI launcher with 2 or more ranks,
    else SingleProcess. Created once."""
    global _group
    if _group is None:
        _group = MPIGroup() if launched_size() > 1 else SingleProcess()
    return _group
