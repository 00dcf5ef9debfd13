"""Build layout: the package ``interp`` with the repository's ``conf/`` inside it as ``interp/conf/``.

``conf/`` (the Hydra configs) stays at the repository root; pyproject.toml maps the package
``interp.conf`` onto it (``package-dir``), and this file lists the packages, that one and its group
folders included, so a wheel carries the configs. Everything else is configured in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

CONF = ["interp.conf", *(f"interp.conf.{p}" for p in find_namespace_packages(where="conf"))]

setup(packages=[*find_namespace_packages(include=["interp", "interp.*"]), *CONF])
