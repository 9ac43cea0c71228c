"""Warnings the audit silences: other libraries' notes about what the audit does on purpose.

Set in the command line's process and again in every worker process (a spawned worker does not
inherit the parent's filters; a forked one does)."""
from __future__ import annotations

import warnings


def quiet_known_warnings() -> None:
    # peft 0.21 calls a transformers API that transformers 5 deprecates, once per peft model: noise
    # between the progress lines that says nothing about the audit
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # our runtime's note on a fused layer adapted beyond the roles asked for: the placement check reports it
    warnings.filterwarnings("ignore", message=".*fused layers are adapted as one layer")
    # peft's own notes on what the audit does on purpose (a checkpoint with a key removed; EVA's memory tip)
    warnings.filterwarnings("ignore", message="Found missing adapter keys", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*eva initialization used with low_cpu_mem_usage=False",
                            category=UserWarning)
    # torch's note when a library builds a rank-0 tensor for the robustness case r = 0 (refused or not: the row says)
    warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op", category=UserWarning)
