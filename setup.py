"""cli.py stays at the repository's root (the project's layout) and installs as ``seqdsl/cli.py``.

Everything else is declared in pyproject.toml; setuptools has no declarative way to put one file of the root into
a package, so its build_py is told about that one module here.
"""

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == "seqdsl":
            modules.append(("seqdsl", "cli", "cli.py"))
        return modules


setup(cmdclass={"build_py": BuildPy})
