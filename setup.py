"""Build and install rigl_sparse.

The native CPU kernels (csrc/cpu) are compiled at install as the extension
``rigl_sparse._C_cpu`` with torch's extension machinery (pybind11, ninja).
They are built for the installing machine's CPU (``-march=native``, so AVX2 or
AVX-512 where it has them); set ``RIGL_SPARSE_CPU_ARCH`` to another ``-march``
value (e.g. ``x86-64-v3``) for a portable build, or ``RIGL_SPARSE_NO_NATIVE=1``
to install without native kernels (``python -m rigl_sparse.info`` then says so).
Install with ``pip install --no-build-isolation -e .`` so the build uses the
installed torch.
"""

import glob
import os

from setuptools import find_packages, setup


def extensions():
    if os.environ.get("RIGL_SPARSE_NO_NATIVE") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    arch = os.environ.get("RIGL_SPARSE_CPU_ARCH", "native")
    cpu = CppExtension(
        "rigl_sparse._C_cpu",
        sorted(glob.glob("csrc/cpu/*.cpp")),
        extra_compile_args=["-O3", f"-march={arch}", "-std=c++20", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
    return [cpu], {"build_ext": BuildExtension}


ext_modules, cmdclass = extensions()

setup(
    name="rigl_sparse",
    version="0.1.0",
    description="RigL dynamic sparse training with truly block-sparse weights",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["rigl_sparse", "rigl_sparse.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "numpy", "tqdm"],
    extras_require={"test": ["pytest"], "gpu": ["triton>=3.6"]},
)
