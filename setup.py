"""Build script: only the C++ extension lives here; all metadata is in setup.cfg."""
import os
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

extra_compile_args = ["-O3"]
if sys.platform != "win32":
    # -fopenmp-simd: honour `#pragma omp simd` (vector loops and reductions) without OpenMP's runtime
    extra_compile_args += ["-fno-math-errno", "-ffp-contract=off", "-fopenmp-simd"]
if os.environ.get("ASE_MLFF_NATIVE") == "1":  # opt-in: not portable across CPUs
    extra_compile_args.append("-march=native")

ext_modules = [
    Pybind11Extension(
        "ase_mlff._ext._core",
        sorted(
            os.path.join("ase_mlff", "_ext", f)
            for f in os.listdir(os.path.join("ase_mlff", "_ext"))
            if f.endswith(".cpp")
        ),
        include_dirs=[os.path.join("ase_mlff", "_ext")],
        # headers: an in-place rebuild recompiles when only a header (a shared core) changed
        depends=sorted(
            os.path.join("ase_mlff", "_ext", f)
            for f in os.listdir(os.path.join("ase_mlff", "_ext"))
            if f.endswith(".hpp")
        ),
        cxx_std=17,
        extra_compile_args=extra_compile_args,
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
