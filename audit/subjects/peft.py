"""The ``peft`` subject: the installed peft, audited through its own code paths.

Its own config classes, ``get_peft_model`` targeting from ``target_modules`` (leaf names, matched by
peft), its own init (PiSSA's SVD, EVA's ``initialize_lora_eva_weights``, DoRA's magnitude, DeLoRA's
w_norm, ...), its own adapter-dtype handling, and ``save_pretrained`` / ``PeftModel.from_pretrained``.
Where each canonical tensor lives is read from the peft bridge's mapping data
(references/peft_bridge), with the older releases' paths as alternatives (OLDER_PATHS); a method the
installed release lacks is not supported (its rows are n/a with the reason), nor is a release older
than OLDEST; arguments a release lacks are found by asking it (its config fields, get_peft_model's
signature). ``nox -s peft-matrix`` audits every release since 0.10.0, each installed into its own folder.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from packaging.specifiers import SpecifierSet
from torch import nn

from references import peft_bridge as bridge

from ..roles import LEAVES, key_matches
from .base import LayerNotSupported, NotSupported, Subject
from .handle import is_conv1d
from .transforms import PackedSkew

# The releases this subject audits. What each method needs from the installed release (the names
# the peft package must export, its first release) is data in the bridge's mapping for the method
# (references/peft_bridge/<method>.py: peft_exports, since), checked against each release's wheel.
OLDEST = "0.10.0"
# method -> (names the peft package must export, first release), derived from the mappings
NEEDS = {m: (mp.peft_exports, mp.since) for m, mp in bridge.MAPPINGS.items() if mp.subject_config is not None}
# (method, canonical tensor) -> paths older releases used, tried after the bridge's (current) path
# DoRA's magnitude: a ParameterDict entry until DoraLinearLayer (0.12.0) took its .weight
OLDER_PATHS = {("dora", "m"): ("lora_magnitude_vector.default",)}
# method -> [(releases, {canonical: (paths, transform)})]: a tensor layout older releases had that the bridge's
# (current) one replaced, read from peft's history. OFT 0.7.0-0.15.2 (tuners/oft/layer.py before #2575) stored
# full blocks oft_r (r, b, b) and rotated by the Cayley map of their skew part 0.5·(B − Bᵀ) (_cayley_batch),
# W_eff = W·blockdiag(R)ᵀ as now; it also scaled each output by a trainable oft_s (d_out, 1), init 1, which
# the paper's OFT has not: left unmapped, it stays at 1, and the trainable count measures it.
OLDER_LAYOUTS = {"oft": [(SpecifierSet("<0.16.0"), {"Q": (("oft_r.default",), PackedSkew(0.5))})]}
# Arguments that came later are found by asking the installed release (config dataclass fields, call
# signatures), not by version: get_peft_model's autocast_adapter_dtype (0.12.0; before it adapters always
# took the base layer's dtype, i.e. autocast off); layers_to_transform (LoraConfig and HRAConfig have it,
# IA3Config and RoadConfig never did). A config argument the release lacks is NotSupported, naming it.


def _version() -> str:
    import peft
    return peft.__version__


def _accepts(fn, name: str) -> bool:
    import inspect
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _make_config(cls_name: str, **kw):
    """peft's ``cls_name`` config from ``kw``; an argument this release's class lacks is NotSupported."""
    import dataclasses

    import peft
    cls = getattr(peft, cls_name)
    lacks = sorted(set(kw) - {f.name for f in dataclasses.fields(cls)})
    if lacks:
        raise NotSupported(f"peft {_version()} {cls_name} has no {', '.join(lacks)}")
    return cls(**kw)


def _fingerprint(items) -> tuple:
    """A cheap content key for a few small tensors, or dicts of them (shapes, dtypes and float64 sums)."""
    tensors = [v for x in items for v in (x.values() if isinstance(x, dict) else (x,))]
    return tuple((tuple(t.shape), str(t.dtype), float(t.detach().double().sum()), float(t.detach().double().abs().sum()))
                 for t in tensors)


def _one_row_batches(calibration, method: str) -> list[dict]:
    """The calibration batches as {"input_ids", "attention_mask"} dicts of one sequence each."""
    if calibration is None:
        raise ValueError(f"{method} needs calibration data")
    out = []
    for x in calibration:
        b = dict(x) if isinstance(x, dict) else {"input_ids": x}
        for i in range(b["input_ids"].shape[0]):
            out.append({k: b[k][i:i + 1] for k in ("input_ids", "attention_mask") if b.get(k) is not None})
    return out


def _at_least(have: str, need: str) -> bool:
    from packaging.version import Version
    return Version(have) >= Version(need)


class Peft(Subject):
    kind = "peft"
    code_packages = ("peft",)
    validates_config = False  # configs reach peft through this translation; its refusals would be ours

    def __init__(self):
        self._eva_cache: dict = {}
        self.version = _version()
        self.label = f"peft {self.version}"
        self.tensor_names = {m: self._names(m) for m in bridge.PEFT_VARIANTS}

    def _older_layout(self, method: str) -> dict[str, tuple] | None:
        """The layout of ``method`` in this release where it is an older one (OLDER_LAYOUTS), else None."""
        return next((dict(layout) for releases, layout in OLDER_LAYOUTS.get(method, ())
                     if releases.contains(self.version, prereleases=True)), None)

    def _names(self, method: str) -> dict[str, tuple]:
        older = self._older_layout(method)
        if older is not None:
            return older
        out = {}
        for t in bridge.MAPPINGS[method].tensors:
            if t.kind == "base weight":
                continue  # W_res: the layer's own weight, read through base_layer
            transform = "reshape" if t.transform.startswith("reshape") else t.transform
            paths = (t.peft, *OLDER_PATHS.get((method, t.canonical), ()))
            out[t.canonical] = (paths, transform, "optional") if t.optional else (paths, transform)
        return out

    def supports(self, method: str) -> str | None:
        if method not in bridge.MAPPINGS or bridge.MAPPINGS[method].subject_config is None:
            return f"peft has no {method!r} method"
        import peft
        mapping = bridge.MAPPINGS[method]
        if not _at_least(self.version, OLDEST):
            return f"peft {self.version} is older than {OLDEST}, the oldest release this subject audits"
        lacks = [n for n in mapping.peft_exports if not hasattr(peft, n)]
        older = self._older_layout(method) is not None
        if lacks or not (older or _at_least(self.version, mapping.since)):
            why = f"; lacks {', '.join(lacks)}" if lacks else ""
            return f"peft {self.version} has no {method} (peft >= {mapping.since}{why})"
        return None

    # -- attach -------------------------------------------------------------------------------------
    def targets(self, model: nn.Module, method: str, cfg: dict) -> dict[str, Any]:
        """target_modules (and friends) as a user following the paper would pass them to peft."""
        from ..cards import get
        kw: dict[str, Any] = {}
        if cfg.get("target_names"):
            # our target_names are re.search patterns; peft fullmatches a string target_modules
            kw["target_modules"] = "|".join(f".*(?:{p}).*" for p in cfg["target_names"])
        else:
            roles = cfg.get("target_roles") or get(method).placement_roles
            names = [n for n, _ in model.named_modules()]
            kw["target_modules"] = sorted({k for r in roles for k in LEAVES[r] if any(key_matches(n, k) for n in names)})
        if cfg.get("layers") is not None:
            kw["layers_to_transform"] = list(cfg["layers"])
        if cfg.get("exclude_names"):
            raise NotSupported("exclude_names has no peft translation here")
        return kw

    def peft_config(self, model: nn.Module, method: str, cfg: dict):
        """peft's config for ``method`` as the bridge's mapping builds it for this subject; a model with
        transformers Conv1D layers (GPT-2 family) gets fan_in_fan_out=True where peft has the flag, as
        peft's docs tell its users."""
        mapping = bridge.MAPPINGS.get(method)
        if mapping is None or mapping.subject_config is None:
            raise NotSupported(f"peft has no {method!r} method")
        conv1d = any(is_conv1d(m) for m in model.modules())
        try:
            return mapping.subject_config(cfg, self.targets(model, method, cfg), conv1d, _make_config)
        except bridge.BridgeUnsupported as e:
            raise NotSupported(str(e)) from None

    def refuses(self, method: str, cfg: dict) -> str | None:
        """The mapping's own refusal of ``cfg`` (an init style or argument this release lacks)."""
        mapping = bridge.MAPPINGS.get(method)
        if mapping is None or mapping.subject_config is None or self.supports(method):
            return None
        try:
            mapping.subject_config(cfg, {"target_modules": ["_"]}, False, _make_config)
        except (NotSupported, bridge.BridgeUnsupported) as e:
            return str(e)
        return None

    def option_gaps(self, method: str) -> dict[str, list[str]]:
        """The options of this release's config class for ``method`` the audit does not vary: "unnamed"
        (fields the mapping does not classify at all: a newer option, or an older one since removed) and
        "unaudited" (classified as changing the function, held at one value). Both empty: every option that
        changes the function is a config axis of the card (references/peft_bridge/_core.py EFFECTS)."""
        import dataclasses

        import peft
        mapping = bridge.MAPPINGS.get(method)
        cls = getattr(peft, mapping.peft_config_class.removeprefix("peft."), None) if mapping else None
        if cls is None or self.supports(method):
            return {"unnamed": [], "unaudited": []}
        base = {f.name for f in dataclasses.fields(peft.PeftConfig)}
        have = [f.name for f in dataclasses.fields(cls) if f.name not in base]
        for field, nested in mapping.nested:  # a nested config class: its fields as "<field>.<name>"
            if (inner := getattr(peft, nested, None)) is not None:
                have += [f"{field}.{f.name}" for f in dataclasses.fields(inner)]
        named = {c.peft: c.effect for c in mapping.config} | {c.peft.split(".")[0]: c.effect for c in mapping.config}
        return {"unnamed": [f for f in have if f not in named],
                "unaudited": [f for f in have if named.get(f) == "unaudited"]}

    def default_config(self, method: str) -> dict:
        """peft's own defaults for the method, read off its config classes, in canonical names."""
        import dataclasses

        import peft

        def defaults(cls_name: str) -> dict:
            return {f.name: f.default for f in dataclasses.fields(getattr(peft, cls_name))
                    if f.default is not dataclasses.MISSING}
        mapping = bridge.MAPPINGS.get(method)
        if mapping is None or mapping.subject_defaults is None:
            return {}
        try:
            return mapping.subject_defaults(defaults)
        except bridge.BridgeUnsupported as e:  # a default this release has that the card's fields cannot hold
            raise NotSupported(str(e)) from None

    def attach(self, model: nn.Module, method: str, cfg: dict, calibration: Iterable[Any] | None) -> nn.Module:
        from peft import get_peft_model
        config = self.peft_config(model, method, cfg)
        torch.manual_seed(int(cfg.get("seed", 0)))  # peft's inits draw from the global generator
        autocast = cfg.get("dtype", "float32") == "float32"
        kw = {"autocast_adapter_dtype": autocast} if _accepts(get_peft_model, "autocast_adapter_dtype") else {}
        if method == "corda":  # peft's CorDA and LoRA-GA need their preprocessing on the bare model first
            self._corda_preprocess(model, config, calibration)
        if method == "loraga":
            self._loraga_preprocess(model, config, calibration)
        try:  # peft < 0.12: adapters take the base layer's dtype, as with autocast off
            pm = get_peft_model(model, config, **kw)
        except (TypeError, ValueError) as e:  # peft's own refusal of a layer type ("... is not supported")
            if "not supported" not in str(e):
                raise
            raise LayerNotSupported(f"peft {self.version} refuses the target layers for {method}: "
                                    f"{str(e).splitlines()[0][:200]}") from None
        if method == "eva":
            self._eva_init(pm, cfg, calibration)
        return pm.eval()

    def _corda_preprocess(self, model: nn.Module, config, calibration) -> None:
        """peft's own CorDA preprocessing: preprocess_corda hooks the targets and collects their input covariance
        while its callback runs the calibration data. Its hook reads each call's layer input as (tokens, d_in)
        after squeeze(0) (peft/tuners/lora/corda.py calib_cov_distribution), so one sequence per call, as peft's
        example feeds it; the ids and attention mask only (labels mark nothing in a forward)."""
        from peft.tuners.lora.corda import preprocess_corda
        rows = _one_row_batches(calibration, "CorDA")

        def run_model():
            for b in rows:
                model(**b)
        preprocess_corda(model, config, run_model=run_model)

    def _loraga_preprocess(self, model: nn.Module, config, calibration) -> None:
        """peft's own LoRA-GA preprocessing: preprocess_loraga runs a train_step (here: forward and backward of each
        calibration batch's next-token cross-entropy, variants/_calibration.causal_lm_loss, the loss the card's
        statement is about) and keeps each target's mean weight gradient."""
        from peft import preprocess_loraga

        from variants._calibration import causal_lm_loss, model_logits
        if calibration is None:
            raise ValueError("LoRA-GA needs calibration data")

        def train_step():
            for batch in calibration:
                causal_lm_loss(model_logits(model, batch), batch).backward()
        preprocess_loraga(model, config, train_step)

    def _eva_init(self, pm: nn.Module, cfg: dict, calibration) -> None:
        """peft's own EVA init: get_eva_state_dict (incremental PCA of the layer inputs) loaded by
        initialize_lora_eva_weights. The state dict is computed once per base weights, ranks, targets
        and data in this process (a pure function of them) and reused by the next attach."""
        from peft import get_eva_state_dict, initialize_lora_eva_weights
        if calibration is None:
            raise ValueError("EVA needs calibration data")
        # dict batches (attention_mask, labels) go as they are: peft's EVA drops the tokens they mask out
        batches = [dict(x) if isinstance(x, dict) else {"input_ids": x} for x in calibration]
        # the state dict (each layer's principal input directions and ranks) depends on the base, the
        # data, the ranks and the targets, not on the scale: alpha and rslora share an entry
        relevant = {k: v for k, v in cfg.items() if k not in ("alpha", "use_rslora")}
        key = (_fingerprint(pm.parameters()), _fingerprint(calibration), repr(sorted(relevant.items())))
        if key not in self._eva_cache:
            self._eva_cache[key] = get_eva_state_dict(pm, batches, forward_fn=lambda m, b: m(
                **{k: b[k] for k in ("input_ids", "attention_mask") if k in b}),
                                                      show_progress_bar=False)
        # a fresh copy each time: peft may adopt the given tensors as the layers' weights
        fresh = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self._eva_cache[key].items()}
        initialize_lora_eva_weights(pm, eva_state_dict=fresh, show_progress_bar=False)

    def adapted_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        adapted = bridge.adapted_module_names(model)  # a set: keep the model's module order
        return {n: m for n, m in bridge.tuner_root(model).named_modules() if n in adapted}

    # -- optional parts -----------------------------------------------------------------------------
    def save(self, model: nn.Module, path: str) -> None:
        model.save_pretrained(path)

    def load(self, base: nn.Module, path: str, method: str, cfg: dict) -> nn.Module:
        from peft import PeftModel
        return PeftModel.from_pretrained(base, path).eval()

    def detach(self, model: nn.Module) -> nn.Module:
        return model.unload()

    def merge(self, model: nn.Module) -> nn.Module:
        try:
            model.merge_adapter()
        except (NotImplementedError, AttributeError, ValueError, TypeError) as e:
            raise NotSupported(f"peft {self.version} cannot merge this adapter: {str(e)[:200]}") from None
        return model

    def unmerge(self, model: nn.Module) -> nn.Module:
        model.unmerge_adapter()
        return model
