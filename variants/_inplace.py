"""When an output hook may write into the base layer's output instead of allocating a new tensor.

An output hook receives y = F.linear(x, W, b), a tensor nothing else holds yet. Updating it in
place saves one (tokens × d_out) allocation and copy per adapted layer and call, which is most of
what separates a hook from peft's wrapper on CPU. It is only done when it is provably safe:

- the layer runs ``nn.Linear.forward`` (or transformers' own ``Conv1D.forward``) unchanged, so y is
  a fresh tensor (not a cache, not x);
- our hook is the only forward hook on the layer and there is no global forward hook, so no other
  code has seen y (a hook registered after ours sees the adapted output either way);
- y is contiguous; with autograd recording, y must also not be a view (an in-place update of a
  view makes autograd copy the whole gradient in backward, undoing the saving).

F.linear does not save its output for backward, so autograd stays exact; if anything ever did,
autograd's version counter would raise at backward rather than compute a wrong gradient.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module

from ._layers import is_conv1d


def _plain_conv1d(layer: nn.Module) -> bool:
    """transformers' own Conv1D (not a subclass): its forward returns a view of a fresh addmm output."""
    return is_conv1d(layer) and type(layer).__module__ == "transformers.pytorch_utils"


def owns_output(layer: nn.Module, y: torch.Tensor, autograd: bool) -> bool:
    """True when the output hook of ``layer`` may overwrite the base output ``y`` in place;
    ``autograd``: whether the in-place op will be recorded (see ``recording``). transformers' Conv1D
    qualifies without autograd only: its output is a view (of the addmm result nothing else holds)."""
    return ((type(layer).forward is nn.Linear.forward or _plain_conv1d(layer))
            and len(layer._forward_hooks) == 1
            and not getattr(_module, "_global_forward_hooks", None)
            and y.is_contiguous()
            and not (autograd and y._base is not None))


def recording(*tensors: torch.Tensor) -> bool:
    """True when autograd records an op on these tensors (grad mode on and one of them needs grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def as_operand(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` ready for an elementwise op with ``dtype`` tensors, computed in ``dtype``: t itself when
    type promotion already gives ``dtype`` (a bf16 activation against float32 adapter tensors is
    upcast inside the kernel), else ``t.to(dtype)``. Same values, no upcast copy kept for backward."""
    return t if torch.promote_types(t.dtype, dtype) == dtype else t.to(dtype)
