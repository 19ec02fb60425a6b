"""Build rigl_sparse's native extensions (the metadata is in pyproject.toml).

The extensions are compiled against the torch already installed, so build without isolation:
``pip install --no-build-isolation .`` (or ``-e .``, or ``pip wheel --no-build-isolation .``).

* ``rigl_sparse._C_cpu`` (csrc/cpu): the CPU kernels, compiled once per instruction set into one
  extension (``baseline`` for any CPU of the host's architecture; on x86-64 also ``avx2`` and
  ``avx512``), the variant chosen at import from what the CPU reports.  Nothing is compiled for the
  build machine's own CPU unless asked: ``RIGL_SPARSE_CPU_ARCH=native`` (or another ``-march``
  value) adds that flag to every source, for a local build only.  Without OpenMP the kernels are
  built single-threaded; without a working C++ compiler (or with ``RIGL_SPARSE_NO_NATIVE=1``) the
  package installs with the reference backend.  ``python -m rigl_sparse.info`` says which.
* ``rigl_sparse._C_cuda`` (csrc/cuda): where torch has CUDA and a CUDA toolkit is found
  (``RIGL_SPARSE_NO_CUDA=1`` skips it; ``RIGL_SPARSE_CUDA_ARCH`` lists ``-gencode`` targets, e.g.
  ``90a`` or ``80;90a``, else torch's ``TORCH_CUDA_ARCH_LIST`` / the visible GPU decides).

A failed optional build never fails the install: it leaves a note beside the package
(``_cpu_build_note.txt``, ``_cuda_build_note.txt``) that ``info`` prints.
"""

import concurrent.futures
import glob
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CPU_NAME, CUDA_NAME = "rigl_sparse._C_cpu", "rigl_sparse._C_cuda"
NOTES = {CPU_NAME: "_cpu_build_note.txt", CUDA_NAME: "_cuda_build_note.txt"}

# Instruction-set variants of csrc/cpu/isa_kernels.cpp and their flags.  The baseline gets none: the
# compiler's default for the host architecture (x86-64: SSE2; aarch64: NEON).
X86_ISAS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
}
CXX_FLAGS = ["-O3", "-std=c++20", "-g0"]  # -g0: no debug info (Python's own CFLAGS ask for -g)


def host_is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def arch_flags() -> list[str]:
    arch = os.environ.get("RIGL_SPARSE_CPU_ARCH")
    return [f"-march={arch}"] if arch else []


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


def put_ninja_on_path() -> None:
    """torch compiles the sources in parallel with ninja only if ``ninja`` is on ``PATH``; the ``ninja``
    package installed beside this interpreter (a virtual environment's, not activated) is not, without this."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def extensions():
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("rigl_sparse compiles its kernels against the torch you use: install torch first, then "
                         "`pip install --no-build-isolation .` (an isolated build has no torch)") from None
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    put_ninja_on_path()

    class Build(BuildExtension):
        """Both extensions are optional: a failure leaves a note and the package installs without it."""

        def build_extensions(self):
            if not self.compiles([], "int main() { return 0; }"):
                for ext in self.extensions:
                    self.write_note(self.note_path(ext), "no working C++ compiler was found")
                warnings.warn("rigl_sparse: no working C++ compiler; installing without the native kernels")
                return
            try:
                super().build_extensions()
            except Exception as err:  # noqa: BLE001 - torch's compiler checks run before any extension
                for ext in self.extensions:
                    if not Path(self.get_ext_fullpath(ext.name)).exists():
                        self.write_note(self.note_path(ext), f"its build failed: {err}")
                warnings.warn(f"rigl_sparse: the native build failed ({err}); installing without it")

        def note_path(self, ext) -> Path:
            return Path(self.get_ext_fullpath(ext.name)).parent / NOTES[ext.name]

        def build_extension(self, ext):
            note = self.note_path(ext)
            try:
                if ext.name == CPU_NAME:
                    problems = self.prepare_cpu(ext)
                super().build_extension(ext)
            except Exception as err:  # noqa: BLE001 - any compiler failure leaves the rest of the package usable
                self.write_note(note, f"its build failed: {err}")
                warnings.warn(f"rigl_sparse: {ext.name} did not build ({err}); installing without it")
                return
            if ext.name == CPU_NAME and problems:
                self.write_note(note, "; ".join(problems))
            else:
                self.remove_note(note)

        def write_note(self, note: Path, text: str) -> None:
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(text + "\n")
            (ROOT / "rigl_sparse" / note.name).write_text(text + "\n")  # also beside the sources (-e installs)

        def remove_note(self, note: Path) -> None:
            note.unlink(missing_ok=True)
            (ROOT / "rigl_sparse" / note.name).unlink(missing_ok=True)

        def compiles(self, flags: list[str], code: str) -> bool:
            """Whether the C++ compiler accepts ``code`` with ``flags`` (and links it, for OpenMP)."""
            cxx = self.compiler.compiler_so[0] if self.compiler.compiler_so else "c++"
            cxx = os.environ.get("CXX", shutil.which("c++") or cxx)
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "probe.cpp"
                src.write_text(code)
                try:
                    result = subprocess.run([cxx, *flags, str(src), "-o", str(Path(tmp) / "probe")],
                                            capture_output=True, text=True)
                except OSError:
                    return False
            return result.returncode == 0

        def prepare_cpu(self, ext) -> list[str]:
            """Compiles the instruction-set variants into objects linked into ``ext``; returns what is missing."""
            problems = []
            if self.compiles(["-fopenmp"], "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }"):
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
            else:
                problems.append("the C++ compiler has no OpenMP (-fopenmp), so the kernels run on one thread")
            variants = {"baseline": []}
            if host_is_x86_64():
                variants.update(X86_ISAS)
            else:
                problems.append(f"only the baseline variant is built on {platform.machine()}")
            accepted = {}
            for isa, flags in variants.items():
                if flags and not self.compiles(flags, "int main() { return 0; }"):
                    problems.append(f"the {isa} variant was not built: the compiler rejects {' '.join(flags)}")
                else:
                    accepted[isa] = flags

            def compile_variant(isa: str) -> list[str]:
                return self.compiler.compile(
                    ["csrc/cpu/isa_kernels.cpp"], output_dir=os.path.join(self.build_temp, "isa", isa),
                    macros=[("RIGL_SPARSE_ISA", isa)], include_dirs=["csrc/cpu"],
                    extra_postargs=CXX_FLAGS + ["-fPIC", "-fopenmp-simd"] + arch_flags() + accepted[isa])

            # the variants side by side (each its own folder), as the extension's own sources compile under ninja
            with concurrent.futures.ThreadPoolExecutor(max(1, min(len(accepted), os.cpu_count() or 1))) as pool:
                for objects in pool.map(compile_variant, accepted):
                    ext.extra_objects += objects
            built = list(accepted)
            ext.define_macros += [(f"RIGL_SPARSE_HAVE_{isa.upper()}", "1") for isa in built if isa != "baseline"]
            return problems

    if os.environ.get("RIGL_SPARSE_NO_NATIVE") == "1":
        (ROOT / "rigl_sparse" / NOTES[CPU_NAME]).write_text("RIGL_SPARSE_NO_NATIVE=1 was set at install\n")
        exts = []
    else:
        sources = sorted(set(glob.glob("csrc/cpu/*.cpp")) - {"csrc/cpu/isa_kernels.cpp"})
        exts = [CppExtension(CPU_NAME, sources, extra_compile_args=CXX_FLAGS + arch_flags(), extra_link_args=[])]
    cuda, why_not = cuda_extension()
    if cuda is None:
        (ROOT / "rigl_sparse" / NOTES[CUDA_NAME]).write_text(why_not + "\n")
    else:
        exts.append(cuda)
    return exts, {"build_ext": Build}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
