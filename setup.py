"""Maps the two source roots (client/, server/) onto the one `nex.collector` namespace."""

from setuptools import find_namespace_packages, setup

package_dir: dict[str, str] = {}
for root in ("client", "server"):
    for package in find_namespace_packages(root, include=["nex.collector.*"]):
        package_dir[package] = f"{root}/{package.replace('.', '/')}"

setup(packages=sorted(package_dir), package_dir=package_dir)
