"""EVA written independently: principal directions from an SVD of the centred calibration inputs,
each carrying a seeded random sign.

    A_l = ±(top-r_l right singular vectors of X_l − mean),  B = 0,  y = x Wᵀ + b + s·(x Aᵀ) Bᵀ

(Paischer et al., arXiv 2410.07170, §3.) A principal direction is defined up to its sign, so any
signs are valid: this implementation multiplies row i of A by a ±1 drawn from a generator seeded
with cfg.seed, where ours fixes the sign so that the largest-magnitude entry is positive and uses an
eigendecomposition of the covariance. Same row space, other signs.
Rank redistribution (rho > 1): each layer offers min(round(r·rho), d_in) components, the explained
variance ratios σ_i² / Σσ² of all layers are pooled and the global top r·(number of layers) kept;
a layer left with rank 0 loses its adapter. s = alpha / r with the config r (peft's
adjust_scaling_factors; without it alpha / r_l); whiten divides direction i by √σ_i. The forward is LoRA's, written out: y + (s · x Aᵀ Bᵀ) in the adapter dtype.

    python -m audit run --impl tests/alternatives/eva_flipped_signs.py:EvaFlippedSigns --card eva
"""
from __future__ import annotations

from collections import defaultdict

import torch

from variants import ParamSpec, Variant
from variants._runtime import allocate, remove_tensors
from variants.eva import EvaConfig
from _dense import fan_in


def _call(model, item):
    if isinstance(item, torch.Tensor):
        return model(item)
    if isinstance(item, dict):
        return model(**item)
    if isinstance(item, (tuple, list)):
        return model(*item)
    raise TypeError(f"calibration_data items must be tensors, tuples or dicts, got {type(item).__name__}")


class EvaFlippedSigns(Variant):
    name = "eva"
    Config = EvaConfig
    needs_calibration = True

    def param_specs(self, d_in, d_out, r, cfg):
        return {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r))}

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > d_in:
            raise ValueError(f"EvaConfig.r: r={cfg.r} exceeds d_in={d_in} of module {name!r} "
                             "(no more principal directions of its inputs)")

    def init(self, layer, cfg, gen):
        layer.adapter_B.zero_()  # A is written by group_init

    # -- data-driven init ------------------------------------------------------------------------
    @staticmethod
    def _record(model, targets, data, ignore_label) -> dict[str, torch.Tensor]:
        """Each target's inputs as (tokens, d_in) in float64, without padding (attention_mask 0) and, when
        ``ignore_label`` is not None, without the tokens whose label is that value."""
        seen: dict[str, list[torch.Tensor]] = defaultdict(list)
        keep = [None]

        def grab(name, x):
            x = x.detach().to("cpu", torch.float64)
            mask = keep[0]
            seen[name].append(x[mask] if mask is not None and mask.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1]))
        hooks = [mod.register_forward_pre_hook(lambda m, args, _n=n: grab(_n, args[0])) for n, mod in targets.items()]
        mode = model.training
        model.eval()
        batches = 0
        try:
            with torch.no_grad():
                for item in data:
                    mask = None
                    if isinstance(item, dict):
                        if item.get("attention_mask") is not None:
                            mask = item["attention_mask"] != 0
                        if item.get("labels") is not None and ignore_label is not None:
                            lab = item["labels"] != ignore_label
                            mask = lab if mask is None else mask & lab
                    keep[0] = None if mask is None else mask.cpu()
                    _call(model, item)
                    batches += 1
        finally:
            for h in hooks:
                h.remove()
            model.train(mode)
        if batches == 0:
            raise ValueError("EVA: calibration_data is empty (give at least one batch of model inputs)")
        return {n: torch.cat(xs) for n, xs in seen.items()}

    def group_init(self, model, targets, cfg, calibration_data):
        if calibration_data is None:
            raise ValueError("EVA needs calibration_data")
        inputs = self._record(model, targets, calibration_data, cfg.label_mask_value if cfg.use_label_mask else None)
        offer = {n: min(round(cfg.r * cfg.rho), fan_in(mod)) for n, mod in targets.items()}
        pcs = {}
        for n in targets:
            X = inputs[n]
            if X.shape[0] < offer[n]:
                raise ValueError(f"EVA: module {n!r} saw {X.shape[0]} calibration tokens, fewer than "
                                 f"the {offer[n]} components it needs; give more calibration_data")
            X = X - X.mean(dim=0, keepdim=True)
            _, sv, vh = torch.linalg.svd(X, full_matrices=False)
            pcs[n] = (sv.square(), vh)
        # global top-k of explained-variance ratios
        pool = []
        for n, (var, _) in pcs.items():
            ratio = var / var.sum() if var.sum() > 0 else var
            pool.extend((float(ratio[i]), n, i) for i in range(offer[n]))
        pool.sort(key=lambda t: t[0], reverse=True)
        rank = {n: 0 for n in targets}
        for _, n, _ in pool[: cfg.r * len(targets)]:
            rank[n] += 1

        signs = torch.Generator().manual_seed(cfg.seed + 4242)
        for n in list(targets):
            mod = targets[n]
            if rank[n] == 0:
                remove_tensors(mod)
                del targets[n]
                continue
            if rank[n] != mod.adapter_rank:
                allocate(mod, self, cfg, rank[n])
            vh = pcs[n][1][: rank[n]]
            if cfg.whiten:  # each direction over √σ_i, σ_i its singular value (peft's whiten)
                vh = vh / pcs[n][0][: rank[n]].sqrt().sqrt()[:, None]
            flip = torch.randint(0, 2, (rank[n], 1), generator=signs, dtype=torch.float64) * 2 - 1
            with torch.no_grad():
                mod.adapter_A.copy_(vh * flip)
                mod.adapter_B.zero_()

    def forward(self, layer, x, y):
        A, B = layer.adapter_A, layer.adapter_B
        # adjust_scaling_factors (default): alpha/r with the config r on every layer; else alpha/r_l
        s = self.cfg.alpha / (self.cfg.r if self.cfg.adjust_scaling_factors else A.shape[0])
        return y + (s * (x.to(A.dtype) @ A.T @ B.T)).to(y.dtype)
