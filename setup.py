"""Maps the top-level services/ and shared/ folders into the trioscale package (see pyproject.toml).

trioscale/services and trioscale/shared are symlinks to those folders, so tools that read the package
from the filesystem (lint-imports) see it as installed; the packages below come from the folders
themselves, so the symlinks are skipped here."""

from setuptools import find_packages, setup

ROOTS = {"trioscale": "trioscale", "trioscale.services": "services", "trioscale.shared": "shared"}

packages = []
package_dir = {}
for name, folder in ROOTS.items():
    package_dir[name] = folder
    packages.append(name)
    nested = [] if name != "trioscale" else ["services", "services.*", "shared", "shared.*"]
    packages += [f"{name}.{sub}" for sub in find_packages(folder, exclude=nested)]

setup(packages=packages, package_dir=package_dir, package_data={"trioscale": ["web/*"],
                                                                   "trioscale.services.coord.console": ["templates/*.html", "static/*"]})
