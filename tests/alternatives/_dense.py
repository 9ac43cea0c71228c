"""How the alternative implementations read a dense layer, written apart from variants/_layers.py.

transformers' Conv1D (GPT-2) stores its weight as (d_in, d_out) and computes x @ weight + bias;
nn.Linear stores (d_out, d_in). The alternatives work on the (d_out, d_in) matrix, as F.linear does.
"""
import torch


def weight_of(layer) -> torch.Tensor:
    """The (d_out, d_in) weight: the layer's own for nn.Linear, the transpose view for Conv1D."""
    return layer.weight.T if type(layer).__name__ == "Conv1D" else layer.weight


def fan_in(layer) -> int:
    return weight_of(layer).shape[1]
