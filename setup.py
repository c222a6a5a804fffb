"""Installs the repository's top-level cli.py as the module medqk.cli.

pyproject.toml maps the folders convert/, deploy/ and energy/ to subpackages of medqk; a single
top-level module cannot be renamed by package-dir, so build_py adds it to the medqk package here.
In an editable install, medqk/__init__.py finds cli.py in the checkout instead.
"""
from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithCli(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == "medqk":
            modules.append(("medqk", "cli", "cli.py"))
        return modules


setup(cmdclass={"build_py": BuildPyWithCli})
