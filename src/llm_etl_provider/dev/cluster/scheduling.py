"""Scheduling on the dev cluster: its node is the only one, so scheduling is checking that a pod fits it."""

from __future__ import annotations

from typing import Any

_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number (``250m`` is 0.25, ``1Gi`` is 1073741824)."""
    text = str(value)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def pod_requests(spec: dict[str, Any]) -> dict[str, float]:
    """What a pod asks of a node: its containers and sidecars together, or its largest init container."""

    def requests(container: dict[str, Any]) -> dict[str, float]:
        resources = container.get("resources", {})
        asked = {**resources.get("limits", {}), **resources.get("requests", {})}  # limits default requests
        return {name: quantity(value) for name, value in asked.items()}

    running: dict[str, float] = {}
    largest_init: dict[str, float] = {}
    sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    for container in [*spec["containers"], *sidecars]:
        for name, value in requests(container).items():
            running[name] = running.get(name, 0) + value
    for container in spec.get("initContainers", []):
        if container.get("restartPolicy") != "Always":
            for name, value in requests(container).items():
                largest_init[name] = max(largest_init.get(name, 0), value)
    return {name: max(running.get(name, 0), largest_init.get(name, 0)) for name in {*running, *largest_init}}


def unfit_reasons(pod: dict[str, Any], node: dict[str, Any], bound: list[dict[str, Any]]) -> list[str]:
    """Why ``pod`` cannot run on ``node`` next to the ``bound`` pods still running there (none: it fits)."""
    spec = pod["spec"]
    reasons = []
    labels = node["metadata"].get("labels", {})
    if any(labels.get(k) != v for k, v in spec.get("nodeSelector", {}).items()):
        reasons.append("node(s) didn't match Pod's node affinity/selector")
    tolerations = spec.get("tolerations", [])
    for taint in node["spec"].get("taints", []):
        if taint["effect"] in ("NoSchedule", "NoExecute") and not any(
            _tolerates(t, taint) for t in tolerations
        ):
            reasons.append(f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}")
    allocatable = {name: quantity(value) for name, value in node["status"].get("allocatable", {}).items()}
    used: dict[str, float] = {}
    for other in bound:
        for name, value in pod_requests(other["spec"]).items():
            used[name] = used.get(name, 0) + value
    for name, value in pod_requests(spec).items():
        if value and used.get(name, 0) + value > allocatable.get(name, 0):
            reasons.append(f"Insufficient {name}")
    if len(bound) + 1 > allocatable.get("pods", 110):
        reasons.append("Too many pods")
    return reasons


def _tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or bool(toleration["key"] == taint["key"])
    return bool(
        toleration.get("key") == taint["key"] and toleration.get("value", "") == taint.get("value", "")
    )
