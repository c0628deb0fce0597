"""Build the compiled kernels of zerokara.

Everything else (metadata, dependencies, package data) is in pyproject.toml.
Every ``cython/<name>.pyx`` becomes the extension module ``zerokara.<name>``.

OpenMP is probed by compiling, linking and running a tiny ``#pragma omp
parallel`` program, as scikit-learn's and astropy's build helpers do. Without
it the package still builds, serially, and says so. Environment switches:

``ZEROKARA_DISABLE_OPENMP=1``  build without OpenMP even where it works.
``ZEROKARA_NATIVE=1``          add ``-march=native`` (opt-in: the binary then
                               only runs on CPUs like the build machine's).
"""

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
CYTHON_DIR = "cython"

OPENMP_PROBE = textwrap.dedent(
    r"""
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int threads = 0;
        #pragma omp parallel reduction(+:threads)
        threads += 1;
        printf("%d\n", threads);
        return threads > 0 ? 0 : 1;
    }
    """
)


def _flag_enabled(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _openmp_flags(compiler):
    """Return ``(compile_args, link_args)`` for OpenMP, or None if it does not work."""
    if _flag_enabled("ZEROKARA_DISABLE_OPENMP"):
        print("zerokara: OpenMP disabled by ZEROKARA_DISABLE_OPENMP")
        return None
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        # Apple clang needs the flag passed to the preprocessor and libomp.
        candidates = [(["-fopenmp"], ["-fopenmp"]), (["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    for compile_args, link_args in candidates:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp, "omp_probe.c")
            src.write_text(OPENMP_PROBE)
            try:
                objects = compiler.compile([str(src)], output_dir=tmp, extra_postargs=compile_args)
                exe = str(Path(tmp, "omp_probe"))
                compiler.link_executable(objects, exe, extra_postargs=link_args)
                out = subprocess.run([exe], capture_output=True, text=True, timeout=60, check=True)
                if int(out.stdout.strip() or 0) > 0:
                    return compile_args, link_args
            except Exception as exc:  # any failure means: no usable OpenMP
                print(f"zerokara: OpenMP probe with {compile_args} failed: {exc}")
    return None


class BuildExt(build_ext):
    """build_ext that adds OpenMP and optimisation flags after probing the compiler."""

    def build_extensions(self):
        compile_args, link_args = [], []
        if self.compiler.compiler_type != "msvc":
            # -O3 for vectorised inner loops; no -ffast-math: it would change numbers.
            compile_args += ["-O3", "-fno-math-errno"]
            if _flag_enabled("ZEROKARA_NATIVE"):
                compile_args.append("-march=native")
        omp = _openmp_flags(self.compiler)
        if omp is None:
            print(
                "zerokara: WARNING: building WITHOUT OpenMP; the kernels run on one thread. "
                "Install a compiler with OpenMP support (gcc, or clang with libomp) and rebuild "
                "to use several cores."
            )
        else:
            compile_args += omp[0]
            link_args += omp[1]
            print(f"zerokara: building with OpenMP ({' '.join(omp[0])})")
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + compile_args
            ext.extra_link_args = list(ext.extra_link_args or []) + link_args
        super().build_extensions()


def _extensions():
    sources = sorted((HERE / CYTHON_DIR).glob("*.pyx"))
    if not sources:
        raise RuntimeError(f"no .pyx sources found in {HERE / CYTHON_DIR}")
    extensions = [
        Extension(
            f"zerokara.{path.stem}",
            [str(path.relative_to(HERE))],
            include_dirs=[np.get_include(), CYTHON_DIR],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for path in sources
    ]
    return cythonize(
        extensions,
        include_path=[CYTHON_DIR],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
