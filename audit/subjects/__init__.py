"""Subjects: the implementation under audit (ours, the installed peft, or a user's library).

See ``base.py`` for the protocol, ``handle.py`` for the canonical view the checks use, and
``load.py`` for naming a subject on the command line (``--subject``).
"""
from .base import LayerNotSupported, LayoutError, LayoutFinding, NotSupported, ShapeMismatch, Subject, resolve
from .handle import Adapted, canonical_weight, is_conv1d, linear_dims
from .load import LIBRARIES, SpecError, as_subject, from_spec, load_class

__all__ = ["Adapted", "LIBRARIES", "LayerNotSupported", "LayoutError", "LayoutFinding", "NotSupported", "ShapeMismatch", "SpecError", "Subject", "as_subject",
           "canonical_weight", "from_spec", "is_conv1d",
           "linear_dims", "load_class", "resolve"]
