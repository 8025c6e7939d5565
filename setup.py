"""Maps the top-level services/ and shared/ folders into the trioscale package (see pyproject.toml)."""

from setuptools import find_packages, setup

ROOTS = {"trioscale": "trioscale", "trioscale.services": "services", "trioscale.shared": "shared"}

packages = []
package_dir = {}
for name, folder in ROOTS.items():
    package_dir[name] = folder
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir, package_data={"trioscale": ["web/*"]})
