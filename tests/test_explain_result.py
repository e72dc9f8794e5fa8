"""``explain`` returns a typed result: ``to_dict()`` is JSON-ready and is what indexing
reads, for the scrubbing detector and for a baseline."""

from __future__ import annotations

import json

import pytest
from conftest import planted_data

import causalmad as cm


def assert_plain_and_indexable(why: cm.ExplainResult) -> None:
    data = why.to_dict()
    assert list(data)[:4] == ["score", "threshold", "fpr", "flagged"]
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    for key, value in data.items():
        assert why[key] == value and key in why and why.get(key) == value
    assert "no such key" not in why and why.get("no such key", 7) == 7
    with pytest.raises(KeyError):
        why["no such key"]


def test_the_scrubbing_detector_explains_with_typed_fields(planted):
    model, h = planted
    det = cm.ScrubbingDetector(model, hypothesis=h, resamples=2, random_state=0).fit(planted_data(400, 0, 0))
    why = det.explain(planted_data(1, 1, 6)[0], top=3)
    assert isinstance(why, cm.ScrubbingExplainResult) and isinstance(why, cm.ExplainResult)
    assert list(why.to_dict()) == [
        "score",
        "threshold",
        "fpr",
        "flagged",
        "broken",
        "variables",
        "values",
        "values_unseen_in_trusted",
    ]
    assert why.details == {} and len(why.broken) == 3 and why.flagged == (why.score > why.threshold)
    assert [v["variable"] for v in why.variables] == ["s"]
    assert_plain_and_indexable(why)


def test_a_baseline_explains_with_its_parts_in_details(planted):
    model, _ = planted
    det = cm.MahalanobisDetector(model).fit(planted_data(200, 0, 0, 0.05))
    why = det.explain(planted_data(1, 1, 6, 0.05)[0], fpr=0.05)
    assert type(why) is cm.ExplainResult and why.fpr == 0.05 and why.threshold == det.threshold(0.05)
    assert set(why.details) == {"aggregate", "sites"} and why["sites"] == why.details["sites"]
    assert_plain_and_indexable(why)
