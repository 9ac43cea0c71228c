"""The ``lycoris`` subject: LyCORIS (lycoris-lora, the LoHa/LoKr authors' library) through its own code paths.

Its own network (``LycorisNetwork``, restricted by ``apply_preset`` to exactly the audit's target names),
its own modules and init (``LoConModule``, ``LohaModule``, ``LokrModule``, ``DiagOFTModule``,
``IA3Module``), its own forward (the default weight-rebuild path: y = base(x) + x (W_new − W)ᵀ), its
own on-the-fly merge and restore (``onfly_merge`` / ``onfly_restore``) and ``save_weights`` /
``load_weights``. LyCORIS patches each adapted layer's ``forward`` and keeps its modules as children of
the network, not of the model: the network is held on the model outside its module tree, its
parameters are the subject's external parameters, and the audit captures outputs at the base layer.

Card -> LyCORIS: lora -> algo "lora"; dora -> "lora" with ``weight_decompose`` (create_lycoris's
``dora_wd``); loha -> "loha"; lokr -> "lokr"; oft -> "diag-oft"; ia3 -> "ia3"; ia3_ff -> "ia3" with
``train_on_input``. The network is built with ``LycorisNetwork(...)`` rather than ``create_lycoris``:
the latter forwards a whitelist of options and silently drops ``rs_lora`` and ``train_on_input``
(lycoris/wrapper.py:53-144), which the constructor passes on to the modules.

Where LyCORIS departs from a paper, the departure is declared in lycoris_findings.py (``deviations``)
with its source and measured magnitude; tests/test_lycoris_subject.py reproduces each against the
library directly.
"""
from __future__ import annotations

import inspect
import logging
import os
from typing import Any, Iterable

import torch
from torch import nn

import lycoris  # noqa: F401 - ImportError here: load.py turns it into a usage error naming the extra
from lycoris import LycorisNetwork, create_lycoris
from lycoris.logging import logger as _lycoris_logger

from .base import LayerNotSupported, NotSupported, Subject
from .transforms import Affine, PackedSkew

# LyCORIS logs every network it builds at INFO (and LoKr's full-matrix switch at WARNING) to stdout
# (lycoris/logging.py:25-38): what it reports the audit measures itself (placement, layout)
_lycoris_logger.setLevel(logging.ERROR)

try:
    from importlib.metadata import version as _dist_version
    VERSION = _dist_version("lycoris-lora")
except Exception:  # noqa: BLE001 - a source checkout without metadata
    VERSION = getattr(lycoris, "__version__", "")

# card -> (LyCORIS algo, fixed module options)
ALGOS = {
    "lora": ("lora", {}),
    "dora": ("lora", {"weight_decompose": True}),
    "loha": ("loha", {}),
    "lokr": ("lokr", {}),
    "oft": ("diag-oft", {}),
    "ia3": ("ia3", {"train_on_input": False}),
    "ia3_ff": ("ia3", {"train_on_input": True}),
}
NOT_IN_LYCORIS = {
    "pissa": "LyCORIS has no SVD-initialised LoRA (PiSSA)",
    "olora": "LyCORIS has no QR-initialised LoRA (OLoRA)",
    "corda": "LyCORIS has no data-driven LoRA init (CorDA's covariance-oriented SVD)",
    "loraga": "LyCORIS has no gradient-driven LoRA init (LoRA-GA)",
    "eva": "LyCORIS has no data-driven LoRA init (EVA)",
    "adalora": "LyCORIS has no SVD-parametrised adaptive-rank LoRA (AdaLoRA)",
    "hra": "LyCORIS has no Householder reflection adaptation (HRA)",
    "vera": "LyCORIS has no shared random projections (VeRA)",
    "vblora": "LyCORIS has no vector-bank LoRA (VB-LoRA): its algos keep every factor per layer, none shared",
    "randlora": "LyCORIS has no shared random bases (RandLoRA)",
    "delora": "LyCORIS has no DeLoRA",
    "road": "LyCORIS has no RoAd",
    "antipasto": "LyCORIS has no AntiPaSTO",
    "miss": "LyCORIS has no shard-sharing adapter (MiSS / Bone: one fragment replicated over the input shards)",
    "hira": "LyCORIS has no Hadamard product with the frozen base weight (HiRA; its LoHa multiplies two low-rank "
            "products, not W0)",
    "fourierft": "LyCORIS has no spectral (inverse-DFT) adaptation (FourierFT)",
    "c3a": "LyCORIS has no circular-convolution adaptation (C3A)",
    "boft": "LyCORIS has no butterfly orthogonal finetuning (BOFT); its diag-OFT is the m = 1 case",
    "shira": "LyCORIS has no sparse adapter on a fixed mask of the base weight's entries (SHiRA)",
}
SELECTION = ("target_names", "target_roles", "exclude_names", "layers")  # resolved by the audit: `targets`
ATTR = "_lycoris_audit_network"  # where the network lives on the model (object.__setattr__: not a submodule)
FILE = "lycoris.safetensors"
# LycorisNetwork's class-level targeting state (lycoris/wrapper.py:196-237), set by apply_preset
PRESET_STATE = ("ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "LORA_PREFIX", "MODULE_ALGO_MAP",
                "NAME_ALGO_MAP", "USE_FNMATCH", "TARGET_EXCLUDE_NAME")


def _defaults() -> tuple[int, float]:
    """create_lycoris's own defaults: (linear_dim, linear_alpha)."""
    params = inspect.signature(create_lycoris).parameters
    return int(params["linear_dim"].default), float(params["linear_alpha"].default)


class Lycoris(Subject):
    kind = "lycoris"
    code_packages = ("lycoris",)
    label = f"lycoris-lora {VERSION}"
    version = VERSION
    tensor_names = {
        "lora": {"A": "lora_down.weight", "B": "lora_up.weight"},
        "dora": {"A": "lora_down.weight", "B": "lora_up.weight", "m": ("dora_scale", "reshape")},
        "loha": {"w1_a": "hada_w1_a", "w1_b": "hada_w1_b", "w2_a": "hada_w2_a", "w2_b": "hada_w2_b"},
        "lokr": {k: (f"lokr_{k}", "identity", "optional") for k in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b")},
        "oft": {"Q": ("oft_blocks", PackedSkew())},
        "ia3": {"l": ("weight", Affine(1, 1))},      # l = 1 + μ·w, μ = 1 (lycoris/modules/ia3.py:9-14)
        "ia3_ff": {"l": ("weight", Affine(1, 1))},
    }
    # canonical fields LyCORIS has no option for
    unsupported = {
        "init_style": "LyCORIS has one LoKr init: W₂ (or W₂ᵦ) = 0, the rest kaiming-uniform (lycoris/modules/lokr.py:227-245)",
        "use_cayley_neumann": "LyCORIS's diag-OFT computes the exact Cayley transform only (lycoris/modules/diag_oft.py:120-131)",
        "num_neumann_terms": "LyCORIS's diag-OFT has no Cayley–Neumann series (lycoris/modules/diag_oft.py:120-131)",
    }

    def supports(self, method: str) -> str | None:
        if method in ALGOS:
            return None
        return NOT_IN_LYCORIS.get(method, f"LyCORIS has no {method!r} algorithm (lycoris/wrapper.py:32-44)")

    # -- attach -------------------------------------------------------------------------------------
    @staticmethod
    def network(model: nn.Module):
        """The LycorisNetwork attached to ``model`` by this subject, or None."""
        return model.__dict__.get(ATTR)

    def _options(self, method: str, cfg: dict) -> tuple[str, int, float, dict]:
        """(algo, lora_dim, alpha, module options) from the canonical config; a field LyCORIS has no option
        for raises NotSupported naming it; fields this translation does not know are passed on."""
        algo, fixed = ALGOS[method]
        dim, alpha = _defaults()
        kw: dict[str, Any] = dict(fixed)
        known = set(SELECTION) | {"seed", "dtype"}
        if method in ("lora", "dora", "loha", "lokr"):
            dim, alpha = cfg.get("r", dim), cfg.get("alpha", alpha)
            kw["rs_lora"] = bool(cfg.get("use_rslora", False))
            known |= {"r", "alpha", "use_rslora"}
        if method == "lokr":
            style = cfg.get("init_style", "lycoris")
            if style != "lycoris":
                raise NotSupported(f"init_style={style!r}: {self.unsupported['init_style']}")
            kw["decompose_both"] = cfg.get("decompose_both", False)
            kw["factor"] = cfg.get("decompose_factor", -1)
            known |= {"decompose_both", "decompose_factor", "init_style"}
        if method == "oft":
            if cfg.get("use_cayley_neumann", False):
                raise NotSupported(f"use_cayley_neumann=True: {self.unsupported['use_cayley_neumann']}")
            # LyCORIS's lora_dim is the block size it asks factorization(d_out, lora_dim) for
            dim = cfg.get("block_size", dim)
            known |= {"block_size", "use_cayley_neumann", "num_neumann_terms", "r", "alpha"}
        if method in ("ia3", "ia3_ff"):
            known |= {"r", "alpha"}  # the schema's defaults: IA3 has neither
        kw.update({k: v for k, v in cfg.items() if k not in known})  # LyCORIS's to refuse (or not)
        return algo, dim, alpha, kw

    def attach(self, model: nn.Module, method: str, cfg: dict, calibration: Iterable[Any] | None,
               targets=None) -> nn.Module:
        if method not in ALGOS:
            raise NotSupported(self.supports(method))
        if self.network(model) is not None:
            raise RuntimeError(f"{self.describe()} is already attached to this model: attaching twice would stack a "
                               "second LycorisNetwork on the patched layers (detach first)")
        if not targets:
            raise ValueError(f"no module matches target_names={list(cfg.get('target_names') or [])} "
                             f"target_roles={cfg.get('target_roles')} layers={cfg.get('layers')}")
        conv1d = sorted(n for n, t in targets.items() if t.kind == "Conv1D")
        if conv1d:
            raise LayerNotSupported(
                f"LyCORIS adapts torch.nn.Linear and Conv1d/2d/3d only (lycoris/modules/base.py:34-41): transformers' "
                f"Conv1D layers {conv1d[:3]}{' ...' if len(conv1d) > 3 else ''} would be skipped without an error")
        algo, dim, alpha, kw = self._options(method, cfg)
        frozen = {id(p): p.requires_grad for p in model.parameters()}
        model.requires_grad_(False)  # LyCORIS trains its network's parameters only (net.parameters())
        torch.manual_seed(int(cfg.get("seed", 0)))  # LyCORIS's inits draw from the global generator
        # exactly these module names: full dotted names matched by fnmatch, no class route, no exclusions. The
        # preset is class-level state that create_lycoris does not reset: every key is set for this network and
        # the previous values are put back after it, so no other LyCORIS user in the process inherits them
        saved = {k: getattr(LycorisNetwork, k) for k in PRESET_STATE}
        try:
            LycorisNetwork.apply_preset({"enable_conv": True, "target_module": [], "target_name": sorted(targets),
                                         "module_algo_map": {}, "name_algo_map": {}, "use_fnmatch": True,
                                         "exclude_name": [], "lora_prefix": "lycoris"})
            net = LycorisNetwork(model, multiplier=1.0, lora_dim=dim, alpha=alpha, network_module=algo, **kw)
        except Exception:
            for p in model.parameters():
                p.requires_grad_(frozen[id(p)])
            raise
        finally:
            for k, v in saved.items():
                setattr(LycorisNetwork, k, v)
        dtype = cfg.get("dtype", "float32")
        if dtype not in (None, "float32"):
            net.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        net.apply_to()
        net.eval()  # LyCORIS's modules are not the model's children: model.eval() does not reach them
        object.__setattr__(model, ATTR, net)
        object.__setattr__(model, ATTR + "_frozen", frozen)
        return model

    def adapted_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        net = self.network(model)
        if net is None:
            return {}
        by_id = {id(l.org_module[0]): l for l in net.loras}
        return {n: by_id[id(m)] for n, m in model.named_modules() if id(m) in by_id}

    def base_layer(self, layer: nn.Module) -> nn.Module:
        return layer.org_module[0]

    def external_parameters(self, model: nn.Module) -> list[torch.Tensor]:
        net = self.network(model)
        return [] if net is None else list(net.parameters())

    # -- optional parts -----------------------------------------------------------------------------
    def default_config(self, method: str) -> dict:
        dim, alpha = _defaults()
        if method in ("lora", "dora"):
            return {"r": dim, "alpha": alpha, "use_rslora": False}
        if method == "loha":
            return {"r": dim, "alpha": alpha}
        if method == "lokr":
            return {"r": dim, "alpha": alpha, "decompose_both": False, "decompose_factor": -1, "init_style": "lycoris"}
        if method == "oft":
            return {"block_size": dim, "use_cayley_neumann": False}
        return {}

    def save(self, model: nn.Module, path: str) -> str:
        os.makedirs(path, exist_ok=True)
        file = os.path.join(path, FILE)
        self._net(model).save_weights(file, None, {"lycoris_version": VERSION})
        return file

    def load(self, base: nn.Module, path: str, method: str, cfg: dict) -> nn.Module:
        from ..cards import get
        file = os.path.join(path, FILE) if os.path.isdir(path) else path
        model = self.attach_with_targets(base, method, cfg, None, get(method).placement_roles)
        self._net(model).load_weights(file)  # LyCORIS's own: load_state_dict(strict=False), returns the key lists
        return model

    def detach(self, model: nn.Module) -> nn.Module:
        net = self._net(model)
        net.restore()
        frozen = model.__dict__.pop(ATTR + "_frozen", {})
        for p in model.parameters():
            p.requires_grad_(frozen.get(id(p), p.requires_grad))
        model.__dict__.pop(ATTR, None)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        net = self._net(model)
        net.restore()          # unpatch the forwards, or the adapter would act on the merged weights again
        net.onfly_merge(1.0)   # LyCORIS's merge meant to be undone (lycoris/modules/base.py:420-445)
        return model

    def unmerge(self, model: nn.Module) -> nn.Module:
        net = self._net(model)
        net.onfly_restore()    # LyCORIS's own undo (lycoris/modules/base.py:447-454)
        net.apply_to()         # the adapter acting again
        return model

    def _net(self, model: nn.Module):
        net = self.network(model)
        if net is None:
            raise RuntimeError(f"{self.describe()} is not attached to this model")
        return net

    # -- declared departures ------------------------------------------------------------------------
    def deviations(self, method: str) -> tuple:
        from .lycoris_findings import DEVIATIONS  # LyCORIS's departures, declared with their sources
        return DEVIATIONS.get(method, ())
