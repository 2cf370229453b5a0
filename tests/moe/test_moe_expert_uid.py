"""Expert uids, grid prefixes and server patterns (pure)."""

from __future__ import annotations

import pytest

from peer.moe.expert_uid import (
    ExpertUID,
    generate_uids_from_pattern,
    grid_prefix,
    is_valid_prefix,
    is_valid_uid,
    parse_pattern,
)


def test_uid_parses_into_prefix_and_coords_and_back() -> None:
    uid = ExpertUID.parse("ffn.3.17")
    assert uid == ExpertUID("ffn", (3, 17))
    assert str(uid) == "ffn.3.17"
    assert uid.grid_prefixes == ["ffn.", "ffn.3."]
    assert ExpertUID.parse("my.model_v2.0").prefix == "my.model_v2"


@pytest.mark.parametrize(
    "bad", ["", "ffn", "3.4", "ffn.", "ffn.3.", "ffn..3", "ffn.-1", "ffn.03", "f n.1", "x" * 300]
)
def test_invalid_uids_are_refused_with_value_error(bad: str) -> None:
    assert not is_valid_uid(bad)
    with pytest.raises(ValueError):
        ExpertUID.parse(bad)


def test_prefixes() -> None:
    assert grid_prefix("ffn") == "ffn."
    assert grid_prefix("ffn", (3,)) == "ffn.3."
    assert is_valid_prefix("ffn.") and is_valid_prefix("ffn.3.")
    assert not is_valid_prefix("ffn") and not is_valid_prefix("ffn.3") and not is_valid_prefix("3.")


def test_patterns_expand_to_the_whole_grid_in_order() -> None:
    assert parse_pattern("ffn.[0:2].5") == ("ffn", [range(0, 2), range(5, 6)])
    assert generate_uids_from_pattern("ffn.[0:2].[1:3]") == ["ffn.0.1", "ffn.0.2", "ffn.1.1", "ffn.1.2"]
    assert generate_uids_from_pattern("expert.7") == ["expert.7"]


@pytest.mark.parametrize("bad", ["", "ffn", "[0:3]", "ffn.[3:1]", "ffn.[a:b]", "ffn.x"])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        generate_uids_from_pattern(bad)
