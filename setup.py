"""Build the Cython face of mdstream's C core.

Every extension compiles the same small C core (mdstream/src/*.c, no Python.h);
one cythonize call, one compiler-directives dict.

Environment switches:
  MDSTREAM_DEBUG=1              assertions on (no NDEBUG), Cython line tracing, -O0 -g
  MDSTREAM_SANITIZE=address,undefined   build with those sanitizers (run with the matching runtime preloaded)
"""
import glob
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("MDSTREAM_DEBUG", "") not in ("", "0")
SANITIZE = os.environ.get("MDSTREAM_SANITIZE", "").strip()

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "embedsignature": True,
    "freethreading_compatible": False,
    "linetrace": DEBUG,
    "profile": False,
}

C_CORE = sorted(glob.glob("mdstream/src/*.c"))
INCLUDE_DIRS = ["mdstream/include", "mdstream/src", numpy.get_include()]
# Extensions that compile more C than the core (the Linux minidump writer).
EXTRA_SOURCES = {"_linux": sorted(glob.glob("mdstream/linuxdump/*.c")), "_crash": ["mdstream/crash/handler.c"]}
EXTRA_INCLUDE_DIRS = {"_linux": ["mdstream/linuxdump"]}

if sys.platform == "win32":
    extra_compile_args = ["/W4", "/std:c11", "/experimental:c11atomics"]
    extra_link_args = []
    define_macros = []
else:
    extra_compile_args = [
        "-std=gnu11",
        "-Wall",
        "-Wextra",
        "-Wno-unused-function",
        "-Wno-unused-parameter",
        "-Wno-missing-field-initializers",
        "-fvisibility=hidden",
    ]
    extra_link_args = []
    define_macros = [("_GNU_SOURCE", "1")]
    if DEBUG:
        extra_compile_args += ["-O0", "-g3", "-UNDEBUG"]
        define_macros += [("MDSTREAM_DEBUG", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    else:
        extra_compile_args += ["-O2", "-DNDEBUG"]
    if SANITIZE:
        flags = [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        extra_compile_args += flags + ["-g"]
        extra_link_args += flags

define_macros.append(("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"))


def extension(module: str) -> Extension:
    return Extension(
        f"mdstream.{module}",
        sources=[f"mdstream/{module}.pyx", *C_CORE, *EXTRA_SOURCES.get(module, [])],
        include_dirs=INCLUDE_DIRS + EXTRA_INCLUDE_DIRS.get(module, []),
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )


MODULES = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob("mdstream/_*.pyx"))

setup(
    ext_modules=cythonize(
        [extension(m) for m in MODULES],
        compiler_directives=COMPILER_DIRECTIVES,
        include_path=["mdstream"],
        build_dir="build/cython",
        annotate=False,
        quiet=True,
    ),
    zip_safe=False,
)
