"""The quality gate's measures, computed by hand."""

from __future__ import annotations

from collections import Counter

from llm_etl_provider.transport.quality import gate_failure, measures
from llm_etl_provider.transport.report import NONE, Agreement


def test_accuracy_and_macro_f1_of_one_label_per_record():
    agreement = Agreement("sentiment", "one", ["positive", "negative", "neutral"])
    agreement.pairs = Counter(
        {("positive", "positive"): 3, ("positive", "negative"): 1, ("negative", "negative"): 2,
         ("neutral", NONE): 2}  # a dead letter answers nothing
    )  # fmt: skip
    agreement.missing = 1
    measured = measures(agreement)
    assert (measured["compared"], measured["golden_records"], measured["without_label"]) == (8, 9, 1)
    assert measured["accuracy"] == 0.625
    # positive: tp 3, fn 1 -> 6/7; negative: tp 2, fp 1 -> 4/5; neutral: tp 0, fn 2 -> 0
    assert measured["macro_f1"] == round((6 / 7 + 4 / 5 + 0) / 3, 4)
    assert "macro_recall" not in measured


def test_hit_rate_and_macro_recall_of_a_list_of_labels():
    agreement = Agreement("tags", "many", ["billing", "shipping"])
    agreement.pairs = Counter({("billing", "yes"): 3, ("billing", "no"): 1, ("shipping", "no"): 2})
    measured = measures(agreement)
    assert measured["accuracy"] == 0.5
    assert measured["macro_recall"] == round((3 / 4 + 0) / 2, 4)
    assert "macro_f1" not in measured


def test_the_gate_says_which_measure_fell_short_or_cannot_be_measured():
    measured = {"field": "sentiment", "compared": 8, "accuracy": 0.625, "macro_f1": 0.55}
    assert gate_failure(measured, "accuracy", None) is None
    assert gate_failure(measured, "accuracy", 0.6) is None
    failure = gate_failure(measured, "macro_f1", 0.8)
    assert failure == "quality gate: macro_f1 0.5500 on 8 golden records is below min_quality 0.8"
    assert "choose accuracy, macro_f1" in str(gate_failure(measured, "macro_recall", 0.5))
    assert "none labelled" in str(gate_failure({**measured, "accuracy": None}, "accuracy", 0.5))
