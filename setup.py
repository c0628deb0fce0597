"""Build the compiled kernels of zerokara.

Everything else (metadata, dependencies, package data) is in pyproject.toml.
Every ``cython/<name>.pyx`` becomes the extension module ``zerokara.<name>``,
compiled for any CPU of its architecture. On x86-64 with gcc or clang it is
also built as ``zerokara.<name>_avx2``: the same source with ``-mavx2 -mfma``,
which ``zerokara.backends.cython`` picks at run time on CPUs that have AVX2
and FMA. Every module is compiled with ``-ffp-contract=off`` and without
``-ffast-math``: no ``a*b + c`` is fused into an FMA and no sum reassociated,
so the AVX2 build only runs independent lanes side by side and gives bitwise
the same results as the portable one (tests/test_simd.py).

OpenMP is probed by compiling, linking and running a tiny ``#pragma omp
parallel`` program, as scikit-learn's and astropy's build helpers do. Without
it the package still builds, serially, and says so. Environment switches:

``ZEROKARA_DISABLE_OPENMP=1``  build without OpenMP even where it works.
``ZEROKARA_NO_AVX2=1``         build only the portable modules.
``ZEROKARA_NATIVE=1``          add ``-march=native`` (opt-in: the binary then
                               only runs on CPUs like the build machine's).
"""

import os
import platform
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
# The AVX2 twins are cythonized from copies named <name>_avx2.pyx (Cython
# names the C file and the module's init function after the file).
AVX2_DIR = "build/cython_avx2"
AVX2_FLAGS = ["-mavx2", "-mfma"]

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

AVX2_PROBE = textwrap.dedent(
    r"""
    #include <immintrin.h>
    __m256d twice(__m256d x) { return _mm256_fmadd_pd(x, _mm256_set1_pd(2.0), x); }
    """
)


def _flag_enabled(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _compiles(compiler, source, compile_args, link_args=None, run=False):
    """True if ``source`` compiles with these flags (and, if asked, links and runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "probe.c")
        src.write_text(source)
        objects = compiler.compile([str(src)], output_dir=tmp, extra_postargs=compile_args)
        if not run:
            return True
        exe = str(Path(tmp, "probe"))
        compiler.link_executable(objects, exe, extra_postargs=link_args)
        out = subprocess.run([exe], capture_output=True, text=True, timeout=60, check=True)
        return int(out.stdout.strip() or 0) > 0


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
        try:
            if _compiles(compiler, OPENMP_PROBE, compile_args, link_args, run=True):
                return compile_args, link_args
        except Exception as exc:  # any failure means: no usable OpenMP
            print(f"zerokara: OpenMP probe with {compile_args} failed: {exc}")
    return None


def _avx2_supported(compiler):
    """True if the compiler builds AVX2+FMA code with AVX2_FLAGS (gcc and clang do)."""
    if compiler.compiler_type == "msvc":
        return False
    try:
        return _compiles(compiler, AVX2_PROBE, AVX2_FLAGS)
    except Exception as exc:
        print(f"zerokara: AVX2 probe failed ({exc}); building only the portable modules")
        return False


class BuildExt(build_ext):
    """build_ext that adds OpenMP and optimisation flags after probing the compiler."""

    def build_extensions(self):
        compile_args, link_args = [], []
        if self.compiler.compiler_type != "msvc":
            # -O3 for vectorised inner loops; no -ffast-math and no FMA
            # contraction: they would change numbers.
            compile_args += ["-O3", "-fno-math-errno", "-ffp-contract=off"]
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
        if any(ext.name.endswith("_avx2") for ext in self.extensions) and not _avx2_supported(self.compiler):
            self.extensions = [ext for ext in self.extensions if not ext.name.endswith("_avx2")]
        for ext in self.extensions:
            extra = AVX2_FLAGS if ext.name.endswith("_avx2") else []
            ext.extra_compile_args = list(ext.extra_compile_args or []) + compile_args + extra
            ext.extra_link_args = list(ext.extra_link_args or []) + link_args
        super().build_extensions()


def _avx2_copy(path):
    """``cython/<name>.pyx`` copied to ``AVX2_DIR/<name>_avx2.pyx`` (rewritten only when it changed)."""
    copy = HERE / AVX2_DIR / f"{path.stem}_avx2.pyx"
    text = path.read_text()
    if not copy.exists() or copy.read_text() != text:
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(text)
    return copy


def _extensions():
    sources = sorted((HERE / CYTHON_DIR).glob("*.pyx"))
    if not sources:
        raise RuntimeError(f"no .pyx sources found in {HERE / CYTHON_DIR}")
    avx2 = platform.machine().lower() in {"x86_64", "amd64"} and not _flag_enabled("ZEROKARA_NO_AVX2")
    modules = [(f"zerokara.{path.stem}", path) for path in sources]
    if avx2:
        modules += [(f"zerokara.{path.stem}_avx2", _avx2_copy(path)) for path in sources]
    extensions = [
        Extension(
            name,
            [str(path.relative_to(HERE))],
            include_dirs=[np.get_include(), CYTHON_DIR],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for name, path in modules
    ]
    return cythonize(
        extensions,
        include_path=[CYTHON_DIR],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
