"""The quality gate: how well the model labels a golden set, measured in each run, and a threshold.

A *golden set* is a file of records with a known label (the enrichment's ``label_field``), enriched with
each run beside its input and published apart (``golden-<index>``). Its measures come from the agreement of
the model's main label with the known one (:func:`~llm_etl_provider.transport.report.golden_agreement`):

- a task of one label per record (``sentiment``, a custom enum): ``accuracy`` and ``macro_f1`` (the mean
  over the labels of their F1, each label seen in the set or in the answers);
- a task of a list of labels (``tags``, ``moderation`` categories, ``entities`` types): ``accuracy`` (how
  often the list holds the known label) and ``macro_recall`` (that, per known label, averaged).

A golden record the model could not answer (a dead letter) counts as a wrong answer. Below ``min_quality``
on the chosen measure the run publishes its manifest and report but no ``_SUCCESS``, and says why.
"""

from __future__ import annotations

from typing import Any

from llm_etl_provider.transport.report import Agreement

QUALITY = "quality"  # the run manifest's key
ONE_LABEL_MEASURES = ("accuracy", "macro_f1")
MANY_LABEL_MEASURES = ("accuracy", "macro_recall")
QUALITY_MEASURES = ("accuracy", "macro_f1", "macro_recall")
DEFAULT_QUALITY_MEASURE = "accuracy"  # measured for every kind of task


def measures(agreement: Agreement) -> dict[str, Any]:
    """The golden set's measures (rounded to 4 places), with what they count."""
    compared = agreement.compared
    measured: dict[str, Any] = {
        "field": agreement.output_field,
        "golden_records": compared + agreement.missing,
        "compared": compared,
        "without_label": agreement.missing,
        "accuracy": round(agreement.agreed / compared, 4) if compared else None,
    }
    if agreement.kind == "many":
        hits: dict[str, list[int]] = {}
        for (reference, among), count in agreement.pairs.items():
            hits.setdefault(reference, [0, 0])[among == "yes"] += count
        recalls = [found / (found + missed) for missed, found in hits.values() if found + missed]
        measured["macro_recall"] = round(sum(recalls) / len(recalls), 4) if recalls else None
        return measured
    seen = {reference for reference, _ in agreement.pairs} | {
        got for _, got in agreement.pairs if got in agreement.labels
    }
    scores = []
    for label in sorted(seen):
        true_positive = agreement.pairs[(label, label)]
        false_positive = sum(
            n for (reference, got), n in agreement.pairs.items() if got == label != reference
        )
        false_negative = sum(
            n for (reference, got), n in agreement.pairs.items() if reference == label != got
        )
        denominator = 2 * true_positive + false_positive + false_negative
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    measured["macro_f1"] = round(sum(scores) / len(scores), 4) if scores else None
    return measured


def gate_failure(measured: dict[str, Any], measure: str, threshold: float | None) -> str | None:
    """Why the run fails its quality gate, or None where it passes (or has no threshold)."""
    if threshold is None:
        return None
    if measure not in measured:
        offered = ", ".join(name for name in QUALITY_MEASURES if name in measured)
        return f"quality gate: {measure} is not measured for this task's labels; choose {offered}"
    value = measured[measure]
    if value is None:
        return f"quality gate: no golden record could be compared on {measured['field']} (none labelled)"
    if value < threshold:
        return (
            f"quality gate: {measure} {value:.4f} on {measured['compared']} golden records is below "
            f"min_quality {threshold}"
        )
    return None
