"""Packaging: every package under the repository root is installed under ``facesmith`` (the root IS the package;
``pyproject.toml`` maps ``facesmith`` to ``.``), found automatically so a new subpackage needs no list to update.
pyproject.toml holds everything else. Guarded, so importing it (it sits in the package folder) does nothing."""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def packages() -> list[str]:
    found = find_packages(where=str(ROOT), exclude=["tests", "tests.*"])
    return ["facesmith"] + [f"facesmith.{p}" for p in found]


class BuildPy(build_py):
    """Leave this file out of the installed package (it is the build script, not a module of the pack)."""

    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir)
                if (m[0], m[1]) != ("facesmith", "setup")]


if __name__ == "__main__":
    setup(packages=packages(), cmdclass={"build_py": BuildPy})
