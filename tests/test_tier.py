"""fastffnn.set_cuda_tier / cuda_tier in any build (on a CPU-only build the setting is kept but changes nothing)."""

import pytest

import fastffnn


def test_set_cuda_tier_returns_the_previous_setting_and_checks_the_name():
    first = fastffnn.cuda_tier()
    assert first in ("auto", "general", "fused")
    try:
        assert fastffnn.set_cuda_tier("general") == first
        assert fastffnn.cuda_tier() == "general"
        assert fastffnn.set_cuda_tier("fused") == "general"
        with pytest.raises(ValueError, match="tier must be one of 'auto', 'general', 'fused', got 'fast'"):
            fastffnn.set_cuda_tier("fast")
        assert fastffnn.cuda_tier() == "fused"
    finally:
        fastffnn.set_cuda_tier(first)
