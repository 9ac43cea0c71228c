"""The installed version of a library a deviation or a subject names, as the running process imports it
(a release installed into a throwaway folder that shadows the environment's is the one reported)."""
from __future__ import annotations

import importlib
from functools import lru_cache

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

# the import name of each library a deviation's ``reference`` can name (the paper has no release)
MODULES = {"peft": "peft", "lycoris": "lycoris", "torchtune": "torchtune"}
DISTRIBUTIONS = {"lycoris": "lycoris-lora"}


@lru_cache(maxsize=None)
def installed(library: str) -> str | None:
    """The imported module's version, else its distribution's; None where it does not import."""
    try:
        module = importlib.import_module(MODULES.get(library, library))
    except Exception:  # noqa: BLE001 - not installed, or broken: no release to scope by
        return None
    version = getattr(module, "__version__", None)
    return str(version) if version else distribution(library)


def distribution(library: str) -> str | None:
    """The version of the installed distribution first on the path (no import: also for a broken one)."""
    try:
        from importlib.metadata import version as dist_version
        return dist_version(DISTRIBUTIONS.get(library, library))
    except Exception:  # noqa: BLE001
        return None


def specifier(spec: str, owner: str) -> SpecifierSet:
    """``spec`` (PEP 440, e.g. ">=0.14,<0.18") parsed, or a ValueError naming ``owner``."""
    try:
        parsed = SpecifierSet(spec)
    except InvalidSpecifier as e:
        raise ValueError(f"{owner}: releases={spec!r} is not a PEP 440 version specifier ({e})") from None
    if not str(parsed):
        raise ValueError(f"{owner}: releases={spec!r} names no release range")
    return parsed


def in_range(spec: str, version: str | None) -> bool:
    """Is ``version`` within ``spec``? An unknown version is within no range."""
    if version is None:
        return False
    try:
        return SpecifierSet(spec).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False
