"""Builds the C++ extension ``retrain._C`` from ``csrc/*.cpp`` and installs ``retrain``.

The top-level ``kernels/`` folder is installed as the subpackage ``retrain.kernels``: a top-level
``kernels`` import would collide with the PyPI project of that name.
"""
import glob
import os
import platform
import sys

from setuptools import setup


def get_extensions():
    from pybind11.setup_helpers import ParallelCompile, Pybind11Extension

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources:
        return []
    # One compiler per core (NPY_NUM_BUILD_JOBS overrides): the four instruction sets' kernels took
    # 40 s one after another on two cores.
    ParallelCompile("NPY_NUM_BUILD_JOBS").install()
    openmp = ["-fopenmp"] if sys.platform != "darwin" else []
    # x86-64: the baseline is x86-64-v2 (SSE4.2); the AVX2 and AVX-512 kernels enable their own
    # instruction sets and are chosen at run time.  Elsewhere only the portable kernel is built.
    march = ["-march=x86-64-v2"] if platform.machine().lower() in ("x86_64", "amd64") else []
    # No contraction of a * b + c into an FMA behind the code's back: every kernel's arithmetic is
    # what its source says, so results do not depend on the compiler's choices.
    flags = ["-O3", "-fno-fast-math", "-ffp-contract=off"] + march + openmp
    return [
        Pybind11Extension(
            "retrain._C",
            sources,
            depends=sorted(glob.glob(os.path.join("csrc", "*.h"))),  # a header change rebuilds every source
            cxx_std=17,
            extra_compile_args=flags,
            extra_link_args=openmp,
        )
    ]


setup(
    name="retrain-embeddings",
    version="0.1.0",
    description="Retrain user embeddings with a frozen item side; NLopt tuning with concurrent probes.",
    packages=["retrain", "retrain.backends", "retrain.kernels"],
    package_dir={"retrain": "retrain", "retrain.kernels": "kernels"},
    ext_modules=get_extensions(),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "nlopt>=2.7", "safetensors", "tqdm", "matplotlib"],
    extras_require={"gpu": ["triton>=3.6"], "test": ["pytest", "pytest-benchmark", "hypothesis", "scipy", "pandas", "optuna"]},
    entry_points={"console_scripts": ["retrain=retrain.cli:main"]},
)
