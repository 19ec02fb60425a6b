"""Build and install rigl_sparse.

The native CPU kernels (csrc/cpu) are compiled at install as the extension
``rigl_sparse._C_cpu`` with torch's extension machinery (pybind11, ninja).
They are built for the installing machine's CPU (``-march=native``, so AVX2 or
AVX-512 where it has them); set ``RIGL_SPARSE_CPU_ARCH`` to another ``-march``
value (e.g. ``x86-64-v3``) for a portable build, or ``RIGL_SPARSE_NO_NATIVE=1``
to install without native kernels (``python -m rigl_sparse.info`` then says so).
The CUDA kernels (csrc/cuda) become ``rigl_sparse._C_cuda`` where torch has
CUDA and a CUDA toolkit is found (``RIGL_SPARSE_NO_CUDA=1`` skips them;
``RIGL_SPARSE_CUDA_ARCH`` lists ``-gencode`` targets, e.g. ``90a`` or ``80;90a``,
else torch's ``TORCH_CUDA_ARCH_LIST`` / the visible GPU decides).  Elsewhere, or
if that compile fails, the package installs without them and
``python -m rigl_sparse.info`` says why.

Install with ``pip install --no-build-isolation -e .`` so the build uses the
installed torch.
"""

import glob
import os
import warnings
from pathlib import Path

from setuptools import find_packages, setup

CUDA_NOTE = Path(__file__).resolve().parent / "rigl_sparse" / "_cuda_build_note.txt"
CUDA_NAME = "rigl_sparse._C_cuda"


def cuda_extension():
    """(the CUDA extension, None) or (None, why it is not built)."""
    if os.environ.get("RIGL_SPARSE_NO_CUDA") == "1":
        return None, "RIGL_SPARSE_NO_CUDA=1 was set at install"
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CUDAExtension

    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} at install had no CUDA"
    if CUDA_HOME is None:
        return None, "no CUDA toolkit (nvcc) was found at install"
    nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-diag-suppress=3189"]
    for arch in filter(None, os.environ.get("RIGL_SPARSE_CUDA_ARCH", "").split(";")):
        nvcc.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    sources = sorted(glob.glob("csrc/cuda/*.cu")) + ["csrc/cuda/bindings.cpp"]
    return CUDAExtension(CUDA_NAME, sources,
                         extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": nvcc}), None


def extensions():
    if os.environ.get("RIGL_SPARSE_NO_NATIVE") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    class Build(BuildExtension):
        """Builds the CPU extension (required) and the CUDA one (optional: a failure is noted, not fatal)."""

        def build_extension(self, ext):
            if ext.name != CUDA_NAME:
                return super().build_extension(ext)
            try:
                super().build_extension(ext)
            except Exception as err:  # noqa: BLE001 - any compiler failure leaves the CPU package usable
                CUDA_NOTE.write_text(f"its build failed: {err}\n")
                warnings.warn(f"rigl_sparse: the CUDA extension did not build ({err}); installing without it")
            else:
                CUDA_NOTE.unlink(missing_ok=True)

    arch = os.environ.get("RIGL_SPARSE_CPU_ARCH", "native")
    cpu = CppExtension(
        "rigl_sparse._C_cpu",
        sorted(glob.glob("csrc/cpu/*.cpp")),
        extra_compile_args=["-O3", f"-march={arch}", "-std=c++20", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
    cuda, why_not = cuda_extension()
    if cuda is None:
        CUDA_NOTE.write_text(why_not + "\n")
        return [cpu], {"build_ext": Build}
    return [cpu, cuda], {"build_ext": Build}


ext_modules, cmdclass = extensions()

setup(
    name="rigl_sparse",
    version="0.1.0",
    description="RigL dynamic sparse training with truly block-sparse weights",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["rigl_sparse", "rigl_sparse.*"]),
    package_data={"rigl_sparse": ["measurements/*.json", "measurements/README.md"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "numpy", "tqdm"],
    extras_require={"test": ["pytest"], "gpu": ["triton>=3.6"]},
)
