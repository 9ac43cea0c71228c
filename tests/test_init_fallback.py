"""A config the subject refuses only for its init is audited under another init the card audits
(audit/init_fallback.py), so the checks that run on the main config alone are not lost."""
from __future__ import annotations

import json

from audit import cli
from audit.cards import get
from audit.init_fallback import init_alternatives, with_fallbacks
from audit.subjects import from_spec
from audit.subjects.ours import Ours


class _NoLycorisInit(Ours):
    """The ours subject, except that it refuses LoKr's authors' init (as peft < 0.17 does)."""

    def refuses(self, method, cfg):
        return "no init_style 'lycoris' here" if cfg.get("init_style", "lycoris") == "lycoris" else None


def test_refused_cases_get_stand_ins_that_keep_their_origin_and_deviations():
    card = get("lokr")
    assert init_alternatives(card) == [{"init_style": "peft"}]
    out = with_fallbacks(card, _NoLycorisInit(), "mlp", "float32", 0)
    derived = {c.id: c for c in out.configs if c.origin}
    # every refused case (the main one and the corners on the authors' init) has a stand-in; the peft-init
    # and defaults cases were accepted as they are
    assert set(derived) == {"r2-alpha4@init_style=peft", "full-alpha16@init_style=peft",
                            "decompose-both@init_style=peft"}
    main = derived["r2-alpha4@init_style=peft"]
    assert main.models is None and main.checks is None and "refuses" in main.why
    # the origin's config-scoped deviation (peft's alpha/r scale on two full factors) applies to its stand-in
    at = out.at(derived["full-alpha16@init_style=peft"])
    assert "peft-lokr-full-scale" in {d.id for d in at.deviations}
    assert with_fallbacks(card, from_spec("ours"), "mlp", "float32", 0) == card  # nothing refused: unchanged


def test_peft_subject_without_the_papers_init_is_still_merged_and_saved(tmp_path):
    """peft has no DeLoRA paper init: the main config's merge and save/load are measured on its stand-in."""
    rc = cli.main(["run", "--subject", "peft", "--variants", "delora", "--models", "mlp", "--dtypes", "fp32",
                   "--checks", "merge,save_load,init", "--out", str(tmp_path), "--quiet", "--jobs", "1"])
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rc == 0
    stand_in = [r for r in rows if r["config"] == "paper@init_style=peft"]
    assert {r["check"] for r in stand_in if r["status"] == "pass"} >= {"merge", "save_load"}
    refused = [r for r in rows if r["config"] == "paper"]
    assert refused and all(r["status"] in ("n/a", "xfail") for r in refused)
    assert not [r for r in rows if r["status"] == "error"]
