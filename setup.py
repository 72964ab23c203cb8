"""Build mnv2_fused._C: the C++ CPU kernel always, the CUDA kernel when it can be compiled.

The extension is compiled against the torch already installed (pip install --no-build-isolation).
Environment switches:
  MNV2_FUSED_BUILD_CUDA=0/1   force the CUDA sources off / on (default: on when torch is a CUDA
                              build and a CUDA toolkit is found)
  CUDA_HOME                   the toolkit root; otherwise found from nvcc, following wrapper scripts
  TORCH_CUDA_ARCH_LIST        GPU architectures; default "8.0;9.0" (nvcc would otherwise build all)
  MAX_JOBS                    parallel compile jobs (ninja)
  MNV2_FUSED_SANITIZE=1       AddressSanitizer build of the C++ code
"""
import glob
import os
import re
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _toolkit_root_from_nvcc(nvcc):
    """nvcc may be a shell wrapper (`exec /opt/cuda-X/bin/nvcc "$@"`); follow it to the real binary."""
    nvcc = os.path.realpath(nvcc)
    try:
        with open(nvcc, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if head.startswith(b"#!"):
        m = re.search(rb"(/\S*/bin/nvcc)\b", head[2:])
        if m:
            nvcc = os.path.realpath(m.group(1).decode())
    return os.path.dirname(os.path.dirname(nvcc))


def _is_toolkit(root):
    return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
        os.path.join(root, "include", "cuda_runtime.h"))


def find_cuda_home():
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(_toolkit_root_from_nvcc(nvcc))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if _is_toolkit(root):
            return os.path.realpath(root)
    return None


# Commands that compile; the others (sdist, egg_info, ...) only package the sources and need
# neither torch nor a compiler.
_COMPILING = {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop", "bdist_egg"}
_compiling = any(a in _COMPILING for a in sys.argv[1:])

# torch.utils.cpp_extension reads CUDA_HOME when it is imported, so settle it first.
_cuda_home = find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:
    if _compiling:
        sys.exit("mnv2_fused is compiled against the installed torch: install torch first, then "
                 "`pip install --no-build-isolation .` (an isolated build environment has no torch)")
    torch = None


def want_cuda():
    flag = os.environ.get("MNV2_FUSED_BUILD_CUDA")
    if flag is not None and flag.strip() != "":
        return flag.strip() not in ("0", "false", "False", "no")
    return torch.version.cuda is not None and _cuda_home is not None


def extensions():
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # No -std flag: torch.utils.cpp_extension picks the standard the installed torch needs.
    # -fopenmp: ATen's parallel_for is a header template built on `#pragma omp parallel`; without
    # the flag it silently runs on one thread.
    cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
    if os.environ.get("MNV2_FUSED_SANITIZE"):
        cxx_flags = ["-O1", "-g", "-fopenmp", "-fsanitize=address", "-fno-omit-frame-pointer"]
    extra_link = ["-fopenmp"] + (["-fsanitize=address"] if os.environ.get("MNV2_FUSED_SANITIZE") else [])
    if want_cuda():
        if _cuda_home is None:
            raise RuntimeError("MNV2_FUSED_BUILD_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME")
        cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        nvcc_flags = ["-O3", "-lineinfo",
                      "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                      "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
        return [CUDAExtension(
            "mnv2_fused._C", cpu_sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags + ["-DMNV2_FUSED_WITH_CUDA"], "nvcc": nvcc_flags},
            extra_link_args=extra_link)]
    return [CppExtension("mnv2_fused._C", cpu_sources,
                         extra_compile_args={"cxx": cxx_flags}, extra_link_args=extra_link)]


if torch is not None:
    class ReusingBuildExtension(BuildExtension):
        """Compiles into build/ in the source tree, where ninja finds the previous build's objects:
        an editable install builds in a fresh temporary directory every time, so without this a
        second `pip install -e .` (the test extras after the main job's install) recompiles
        everything. ninja recompiles what changed, flags included."""

        def finalize_options(self):
            super().finalize_options()
            if os.access(HERE, os.W_OK):
                tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}"
                self.build_temp = os.path.join(HERE, "build", f"temp-{tag}")

    setup(ext_modules=extensions(), cmdclass={"build_ext": ReusingBuildExtension})
else:
    setup()
