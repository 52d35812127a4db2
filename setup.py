"""Build of the optional native extension ``visionllm._C``.

It holds the multi-scale deformable attention kernels of the image tokenizer
(VisionLLM sec. 3.2, Deformable DETR eq. 3): always the C++ CPU kernel, plus the
CUDA kernel when torch has CUDA and either a GPU is visible or
``VISIONLLM_BUILD_CUDA=1`` (archs from ``TORCH_CUDA_ARCH_LIST``, default
"8.0;9.0"). ``VISIONLLM_NATIVE_ARCH=1`` compiles the CPU kernel for the build
machine's vector ISA (-march=native; the default is the portable baseline). The extension is optional by design: when torch is missing, the
compiler fails, or ``VISIONLLM_NO_EXT=1``, the install goes on without it and
``visionllm.ops`` falls back to the pure-PyTorch reference.

Metadata lives in pyproject.toml; this file only adds ``ext_modules``.
"""

from __future__ import annotations

import os
import sys
import traceback

from setuptools import setup

EXT_NAME = "visionllm._C"


def _warn(msg: str) -> None:
    bar = "=" * 78
    print(f"\n{bar}\nWARNING (visionllm): {msg}\n{bar}\n", file=sys.stderr)


def _cuda_home_hint() -> None:
    # torch derives CUDA_HOME from `which nvcc`; a wrapper script in
    # /usr/local/bin then yields /usr/local, which has no CUDA headers.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    if os.path.isfile("/usr/local/cuda/include/cuda_runtime.h"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _want_cuda(torch, cuda_home) -> bool:
    if torch.version.cuda is None or cuda_home is None:
        return False
    return torch.cuda.is_available() or os.environ.get("VISIONLLM_BUILD_CUDA") == "1"


def _extension_setup() -> dict:
    if os.environ.get("VISIONLLM_NO_EXT") == "1":
        _warn("VISIONLLM_NO_EXT=1: skipping the native extension")
        return {}
    try:
        _cuda_home_hint()
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # no torch in the build env: pure-Python install
        _warn(f"cannot import torch ({exc!r}); installing without the native extension")
        return {}

    class OptionalBuildExtension(cpp_extension.BuildExtension):
        """A compile or link failure becomes a warning; the install continues."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception:  # noqa: BLE001 - any failure must not break the install
                traceback.print_exc()
                _warn(
                    f"building {ext.name} failed; visionllm will use the pure-PyTorch "
                    "reference for deformable attention (see the error above)"
                )
                self.failed = getattr(self, "failed", set()) | {ext.name}

        def copy_extensions_to_source(self):
            # Editable installs copy built libraries into the source tree; skip
            # the ones that failed instead of erroring on the missing file.
            failed = getattr(self, "failed", set())
            kept = self.extensions
            self.extensions = [e for e in kept if e.name not in failed]
            try:
                super().copy_extensions_to_source()
            finally:
                self.extensions = kept

        def get_outputs(self):
            failed = getattr(self, "failed", set())
            outputs = super().get_outputs()
            if not failed:
                return outputs
            return [o for o in outputs if os.path.exists(o)]

    cxx = ["-O3", "-fopenmp", "-fno-math-errno"]
    if os.environ.get("VISIONLLM_NATIVE_ARCH") == "1":  # ~20% faster, not portable
        cxx.append("-march=native")
    link = ["-fopenmp"]
    sources = ["ops/msda_cpu.cpp"]
    if _want_cuda(torch, cpp_extension.CUDA_HOME):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        print(f"visionllm: building CPU + CUDA kernels for {os.environ['TORCH_CUDA_ARCH_LIST']}")
        ext = cpp_extension.CUDAExtension(
            EXT_NAME,
            sources + ["ops/msda_cuda.cu"],
            include_dirs=[os.path.abspath("ops")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link,
        )
    else:
        print(
            "visionllm: building the CPU kernel only (no CUDA toolkit/GPU, or torch without CUDA)"
        )
        ext = cpp_extension.CppExtension(
            EXT_NAME,
            sources,
            include_dirs=[os.path.abspath("ops")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    return {
        "ext_modules": [ext],
        "cmdclass": {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)},
    }


setup(**_extension_setup())
