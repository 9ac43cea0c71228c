"""Subjects by name: ``ours``, ``peft``, a built-in one for another library (``lycoris``, ``torchtune``:
optional extras), or ``MODULE:Class`` / ``FILE.py:Class`` naming a ``variants.Variant`` subclass (run by
our runtime) or an ``audit.subjects.Subject`` (a driver)."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from .base import Subject


class SpecError(ValueError):
    """A subject spec that cannot be loaded; the message says why (the CLI turns it into exit 2)."""


# built-in subjects for other libraries (optional extras): name -> (module under audit.subjects, class, extra)
LIBRARIES = {"lycoris": ("lycoris", "Lycoris", "lycoris"), "torchtune": ("torchtune", "Torchtune", "torchtune")}


def from_spec(spec: str, flag: str = "--subject") -> Subject:
    """The subject named by ``spec`` (see the module docstring)."""
    if spec == "ours":
        from .ours import Ours
        return Ours()
    if spec == "peft":
        from .peft import Peft
        return Peft()
    if spec in LIBRARIES:
        return library_subject(spec, flag)
    return as_subject(load_class(spec, flag), spec)


def library_subject(name: str, flag: str = "--subject") -> Subject:
    """A built-in subject for another library; a SpecError naming the extra when the library is absent."""
    module, cls, extra = LIBRARIES[name]
    try:
        mod = importlib.import_module(f"{__package__}.{module}")
        return getattr(mod, cls)()
    except ImportError as e:
        raise SpecError(f"{flag} {name}: the library does not import ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); install it with "
                        f"pip install 'adapter-audit[{extra}]' or run nox -s audit-{name}") from None


def as_subject(cls, label: str = "") -> Subject:
    """A Variant subclass runs on our runtime; a Subject subclass is instantiated."""
    import variants
    if isinstance(cls, Subject):
        return cls
    if isinstance(cls, type) and issubclass(cls, variants.Variant):
        from .ours import Ours
        return Ours(variant=cls, label=label or f"{cls.__module__}:{cls.__name__}")
    subject = cls()
    subject.label = subject.label or label or f"{cls.__module__}:{cls.__name__}"
    return subject


@contextlib.contextmanager
def _on_sys_path(folder: str):
    """``folder`` first on sys.path for the duration (removed again unless it was already there)."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    importlib.invalidate_caches()  # files written moments ago (tests, editors) must be seen
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _import_failed(spec: str, what: str, e: BaseException, flag: str) -> SpecError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return SpecError(f"{flag} {spec}: importing {what} raised {type(e).__name__}" + (f": {msg}" if msg else ""))


def load_class(spec: str, flag: str = "--subject"):
    """The class named by a subject spec: ``module:Class`` (the current folder importable) or
    ``path/to/file.py:Class`` (the file's folder importable while it loads, so sibling modules work).
    Any failure is a SpecError naming why; the user's module never produces a traceback here."""
    if ":" not in spec:
        raise SpecError(f"{flag} must be MODULE:CLASS or FILE.py:CLASS, got {spec!r}")
    mod_name, cls_name = spec.rsplit(":", 1)
    if not mod_name or not cls_name.isidentifier():
        raise SpecError(f"{flag} must be MODULE:CLASS or FILE.py:CLASS, got {spec!r}")
    if mod_name.endswith(".py") or "/" in mod_name or os.sep in mod_name:
        path = Path(mod_name).expanduser().resolve()
        if not path.is_file():
            raise SpecError(f"{flag}: file not found: {path}")
        name = f"_audit_impl_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise SpecError(f"{flag}: {path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            with _on_sys_path(str(path.parent)):
                module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's code: report, don't crash
            sys.modules.pop(name, None)
            raise _import_failed(spec, path.name, e, flag) from None
    else:
        here = os.getcwd()
        cwd_importable = "" in sys.path or "." in sys.path or here in sys.path
        try:
            with (contextlib.nullcontext() if cwd_importable else _on_sys_path(here)):
                importlib.invalidate_caches()
                module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name and mod_name.split(".")[0] == e.name.split(".")[0] and mod_name.startswith(e.name):
                raise SpecError(f"{flag} {spec}: no module named {e.name!r} (looked in the current folder "
                                 f"{here} and sys.path; for a file use FILE.py:{cls_name})") from None
            raise _import_failed(spec, mod_name, e, flag) from None
        except (Exception, SystemExit) as e:  # noqa: BLE001
            raise _import_failed(spec, mod_name, e, flag) from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise SpecError(f"{flag}: module {mod_name!r} has no attribute {cls_name!r}")
    import variants
    if not (isinstance(cls, type) and issubclass(cls, (variants.Variant, Subject))):
        raise SpecError(f"{flag}: {spec} is not a subclass of variants.Variant or audit.subjects.Subject")
    return cls


