"""The command line names a k-domain mix beside its ratio; two sets keep the ratio alone."""

from __future__ import annotations

from sharpmix.cli import _ratio_or_mix


def test_a_k_domain_mix_is_named_with_its_shares() -> None:
    weights = {"web": 0.2, "code": 0.1, "math": 0.7}
    assert _ratio_or_mix(0.3, weights) == "0.3 (web 0.2, code 0.1, math 0.7)"
    assert _ratio_or_mix(0.25, {"web": 0.25, "math": 0.75}) == "0.25"
    assert _ratio_or_mix(0.25, None) == "0.25"
