"""Build and install rigl_sparse (pure Python for now; native extensions register here later)."""

from setuptools import find_packages, setup

setup(
    name="rigl_sparse",
    version="0.1.0",
    description="RigL dynamic sparse training with truly block-sparse weights",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["rigl_sparse", "rigl_sparse.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "numpy", "tqdm"],
    extras_require={"test": ["pytest", "hypothesis"], "gpu": ["triton>=3.6"]},
)
