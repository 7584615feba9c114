"""Builds the Cython fast paths (fastpath/*.pyx); everything else is in pyproject.toml.

fastpath/_fanout.pyx calls libzmq too, but links nothing: it opens the libzmq pyzmq
already loaded at import (docs/design-notes.md), so it builds like the others, for the
editable install and the wheel alike, without pyzmq's headers or library path."""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

here = os.path.dirname(os.path.abspath(__file__))
extensions = [
    Extension(f"fastpath.{os.path.splitext(os.path.basename(path))[0]}", [os.path.relpath(path, here)],
              extra_compile_args=["-O3"])
    for path in sorted(glob.glob(os.path.join(here, "fastpath", "*.pyx")))
]

setup(ext_modules=cythonize(extensions, language_level=3, nthreads=2,
                            compiler_directives={"embedsignature": True}))
