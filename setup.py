"""Build mnv2_fused._C: the C++ CPU kernel always, the CUDA kernel when it can be compiled.

Environment switches:
  MNV2_FUSED_BUILD_CUDA=0/1   force the CUDA sources off / on (default: on when torch is a CUDA
                              build and a CUDA toolkit is found)
  CUDA_HOME                   the toolkit root; otherwise found from nvcc, following wrapper scripts
  TORCH_CUDA_ARCH_LIST        GPU architectures; default "8.0;9.0" (nvcc would otherwise build all)
  MAX_JOBS                    parallel compile jobs (ninja)
"""
import glob
import os
import re
import shutil

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


# torch.utils.cpp_extension reads CUDA_HOME when it is imported, so settle it first.
_cuda_home = find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


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
        # AddressSanitizer build for the robustness run; see README.
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


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
)
