"""Imported by the benchmark scripts before NumPy: OpenBLAS picks its own kernel for this CPU.

OpenBLAS reads OPENBLAS_CORETYPE once, when NumPy loads it. The sgemm peak that MFU and the
linear kernels' share divide by must be what this machine can do; a core type left in the
environment can halve it (Haswell, the AVX2 kernel, on an AVX-512 AMD EPYC here: 214 against
394-438 GFLOP/s, and an "MFU" of 1.40). So the benchmarks drop the variable while NumPy is not
yet loaded; ``DROPPED_CORETYPE`` is the value dropped (None: none was set, or NumPy was already
loaded and the environment is left as it is), for the report.
"""
import os
import sys

DROPPED_CORETYPE = (os.environ.pop("OPENBLAS_CORETYPE", None)
                    if "numpy" not in sys.modules else None)
