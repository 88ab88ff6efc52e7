"""Build the Cython extensions of AmDb.

AMDB_BUILD=debug   -O0 -g, C asserts on, Cython bounds checks on (make debug)
AMDB_BUILD=asan    debug + AddressSanitizer/UBSan (make asan)
anything else      -O3, release
"""
import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

BUILD = os.environ.get("AMDB_BUILD", "release")
INCLUDE_DIRS = ["amdb/shm", "amdb/native", numpy.get_include()]

if BUILD in ("debug", "asan"):
    cflags = ["-O0", "-g3", "-fno-omit-frame-pointer", "-DAMDB_DEBUG=1", "-UNDEBUG"]
    directives = {"boundscheck": True, "wraparound": False, "initializedcheck": True}
    ldflags = []
    if BUILD == "asan":
        cflags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        ldflags += ["-fsanitize=address,undefined"]
else:
    cflags = ["-O3", "-DNDEBUG", "-DCYTHON_WITHOUT_ASSERTIONS"]
    directives = {"boundscheck": False, "wraparound": False, "initializedcheck": False}
    ldflags = []
cflags += ["-std=gnu11", "-Wno-unused-function", "-Wno-unreachable-code"]
directives.update(language_level=3, cdivision=True)


def extension(pyx):
    name = pyx[:-4].replace(os.sep, ".")
    return Extension(
        name,
        [pyx],
        include_dirs=INCLUDE_DIRS,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


setup(
    ext_modules=cythonize(
        [extension(p) for p in sorted(glob.glob("amdb/**/*.pyx", recursive=True))],
        compiler_directives=directives,
        include_path=["."],
        build_dir=f"build/cython-{BUILD}",
        nthreads=int(os.environ.get("AMDB_CYTHON_JOBS", "0")) or None,
    ),
)
