"""What pyproject.toml cannot say: the package list. Each top-level folder is installed as a subpackage of
fleettwin (``package-dir`` in pyproject.toml), and every package found below it goes into the wheel, so a new
feature's ``models/<feature>/`` or ``sim/<feature>/`` needs no line here or there."""

from setuptools import find_packages, setup

ROOTS = {
    "fleettwin": "fleettwin",
    "fleettwin.models": "models",
    "fleettwin.sim": "sim",
    "fleettwin.live": "live",
    "fleettwin.experiments": "experiments",
}
# scenarios and traces, found with importlib.resources
DATA_PACKAGES = ["fleettwin.configs", "fleettwin.traces"]

packages = list(DATA_PACKAGES)
for package, folder in ROOTS.items():
    packages += [package, *(f"{package}.{sub}" for sub in find_packages(folder))]

setup(packages=packages)
