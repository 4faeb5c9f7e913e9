"""Packaging beyond pyproject.toml: the top-level ``configs/`` ships inside the wheel as
``genflow/configs`` (one source in the repository, no second copy)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
CONFIGS = ["genflow.configs", *(f"genflow.configs.{d.name}" for d in sorted((HERE / "configs").iterdir()) if d.is_dir())]

setup(
    packages=[*find_packages(include=["genflow*"]), *CONFIGS],
    package_dir={"genflow.configs": "configs"},
    package_data={name: ["*.yaml"] for name in CONFIGS},
)
