"""Build the Cython/OpenMP kernels in csrc/ as extensions tinygpt._<name>.

Environment switches:
  TINYGPT_DEBUG=1    bounds and wraparound checks on, -O0 -g (slow; for hunting bugs)
  TINYGPT_NATIVE=1   add -march=native (the wheel then only runs on this CPU family)
  TINYGPT_NO_OPENMP=1  build serial kernels even when the compiler has OpenMP
"""
import glob
import os
import re
import shutil
import sys
import tempfile
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("TINYGPT_DEBUG") == "1"
NATIVE = os.environ.get("TINYGPT_NATIVE") == "1"


def compiler_has_openmp(compiler) -> bool:
    """Compile and link a tiny OpenMP program with the compiler setuptools will use."""
    if os.environ.get("TINYGPT_NO_OPENMP") == "1":
        return False
    source = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        try:
            objects = compiler.compile([path], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objects, os.path.join(tmp, "probe"), extra_postargs=["-fopenmp"])
        except Exception:
            return False
    return True


class BuildExtWithOpenMP(build_ext):
    """Add -fopenmp to every extension when the compiler supports it; otherwise warn and build serial."""

    def build_extensions(self):
        openmp = compiler_has_openmp(self.compiler)
        if not openmp:
            warnings.warn("tinygpt: the compiler has no OpenMP; building serial kernels")
            print("tinygpt: WARNING: no OpenMP, kernels will run on one thread", file=sys.stderr)
        for ext in self.extensions:
            if openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()

    def copy_file(self, infile, outfile, *args, **kwargs):
        """Copy a built module over its in-place twin by renaming a copy made beside it: a new
        file (a new inode), so a process that has the old module loaded keeps its mapping intact
        instead of crashing as the file is rewritten under it."""
        if self.dry_run:
            return super().copy_file(infile, outfile, *args, **kwargs)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(outfile) or ".", prefix=".build-")
        os.close(fd)
        try:
            shutil.copy2(infile, tmp)
            os.replace(tmp, outfile)
        except BaseException:
            os.unlink(tmp)
            raise
        self.announce(f"copying {infile} -> {outfile} (by rename)", level=2)
        return outfile, True


# Warnings on: our C (csrc/*.h) compiles clean with them (tests/test_kernels.py compiles each
# header alone with -Werror). No -Werror here: the C that Cython generates varies with its
# version and is not ours to fix.
compile_args = ["-Wall", "-Wextra"] + (["-O0", "-g"] if DEBUG else ["-O3"])
if NATIVE:
    compile_args.append("-march=native")


def local_depends(path, found=None):
    """The csrc/ files that path reads, directly or through others: headers named in quotes
    (cdef extern from "x.h", #include "x.h") and cimported .pxd modules. Listed as an
    extension's depends, so that editing one of them rebuilds the extension."""
    found = set() if found is None else found
    with open(path) as f:
        text = f.read()
    names = re.findall(r'"(\w+\.h)"', text)
    names += [m + ".pxd" for m in re.findall(r"^\s*(?:from|cimport)\s+(\w+)", text, re.M)]
    for name in names:
        dep = os.path.join("csrc", name)
        if os.path.exists(dep) and dep not in found:
            found.add(dep)
            local_depends(dep, found)
    return sorted(found)


# Flags of one module. adamw: its twin rounds every product and sum apart (NumPy), so no
# multiply-add may fuse them (its AVX-512 and AVX2 clones have FMA), and sqrt of v >= 0 needs
# no errno check, which kept its loop from vectorizing. layernorm: its AVX-512 and AVX2 clones have FMA, which
# would round dx's cancelling difference dy * w - mean(dy * w) apart from its twin (a row of one
# entry gave a nonzero dx); unfused, every clone keeps the bits of the baseline build.
MODULE_ARGS = {"adamw": ["-ffp-contract=off", "-fno-math-errno"],
               "layernorm": ["-ffp-contract=off"]}


def module_name(path):
    return os.path.splitext(os.path.basename(path))[0]


extensions = [
    Extension(
        f"tinygpt._{module_name(path)}",
        [path],
        include_dirs=[np.get_include(), "csrc"],
        depends=local_depends(path),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args + MODULE_ARGS.get(module_name(path), []),
        extra_link_args=[],
    )
    for path in sorted(glob.glob("csrc/*.pyx"))
]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
}

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives),
    cmdclass={"build_ext": BuildExtWithOpenMP},
)
