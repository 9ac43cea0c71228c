"""hooklib_buggy: a copy of hooklib (tests/thirdparty/hooklib) with ONE planted bug, for the audit to catch.

PLANTED BUG (checkpoint.load): the tensors are restored by "<leaf>.<tensor>" (e.g. "q_proj.lora_down")
instead of the full key, so every layer with the same leaf name gets the same tensors (the last layer's):
the key check still passes, the reloaded model silently differs. The audit's save_load check catches it
(logits_max_abs_diff, adapter_tensors_max_abs_diff). Everything else is identical to hooklib.

hooklib: LoRA and (IA)³ for any PyTorch model, as forward hooks on its nn.Linear layers.

    import hooklib
    model = hooklib.attach(model, hooklib.HookConfig(method="lora", rank=8, alpha=16.0))
    ...train the parameters that require grad...
    hooklib.save(model, "adapter.safetensors")
    model = hooklib.load(fresh_model, "adapter.safetensors")

Nothing is wrapped: the adapted layer *is* the original nn.Linear, with its adapter tensors registered
on it as parameters and one forward hook that applies them (``detach`` removes both).

    lora  y = x Wᵀ + b + (alpha/rank) · (x lora_downᵀ) lora_up    lora_down (rank, d_in), lora_up (rank, d_out)
    ia3   y = (x Wᵀ + b) ⊙ ia3_scale                                 ia3_scale (1, d_out)
"""
from .config import HookConfig
from .core import adapted_modules, attach, detach
from .checkpoint import load, save

__all__ = ["HookConfig", "adapted_modules", "attach", "detach", "load", "save"]
__version__ = "0.1.0"
