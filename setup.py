"""The package list of the distribution; everything else is declared in pyproject.toml.

The zoo configs live in the repository's top-level ``configs/`` and ship inside the package as
``lyadeq_zoo/_configs`` (``package-dir`` in pyproject.toml). setuptools' package discovery finds folders by
their import path, so it never turns ``configs/`` into ``lyadeq_zoo._configs``: the list is built here from
both trees (every folder of each counts, data folders such as ``pretrained/<name>/`` included, so that
setuptools ships their files without warning that they look like packages left out).
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["lyadeq_zoo", "lyadeq_zoo.*"]),
        "lyadeq_zoo._configs",
        *(f"lyadeq_zoo._configs.{name}" for name in find_namespace_packages(where="configs")),
    ]
)
