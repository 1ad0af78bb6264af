"""The Pod Security Standards' restricted profile (baseline included), as the pod-security-admission
controller checks it (k8s.io/pod-security-admission/policy, latest version of each check), on a pod dict.

``restricted_violations(pod, minor)`` returns one line per violation; ``minor`` is the Kubernetes 1.x release
whose checks apply (image volumes are allowed from 1.33 on).
"""

from __future__ import annotations

from typing import Any

VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *spec.get("initContainers", []),
        *spec.get("containers", []),
        *spec.get("ephemeralContainers", []),
    ]


def restricted_violations(pod: dict[str, Any], minor: int = 37) -> list[str]:
    spec = pod["spec"]
    pod_context = spec.get("securityContext") or {}
    found: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            found.append(what)

    # baseline
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        check(not spec.get(host), f"{host} is set")
    allowed_volumes = VOLUME_TYPES | ({"image"} if minor >= 33 else set())
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        check(kinds <= allowed_volumes, f"volume {volume['name']} has restricted type {sorted(kinds)}")
    for sysctl in pod_context.get("sysctls", []):
        check(sysctl["name"] in SAFE_SYSCTLS, f"unsafe sysctl {sysctl['name']}")
    check(pod_context.get("seLinuxOptions", {}).get("user") is None, "pod SELinux user set")
    # restricted, pod level: containers inherit what they do not set
    for container in _containers(spec):
        name = container["name"]
        context = container.get("securityContext") or {}
        check(not context.get("privileged"), f"{name}: privileged")
        check(not (context.get("windowsOptions") or {}).get("hostProcess"), f"{name}: hostProcess")
        for port in container.get("ports", []):
            check(not port.get("hostPort"), f"{name}: hostPort {port.get('hostPort')}")
        check(
            context.get("procMount", "Default") == "Default", f"{name}: procMount {context.get('procMount')}"
        )
        selinux = context.get("seLinuxOptions") or {}
        check(
            selinux.get("user") is None and selinux.get("role") is None, f"{name}: SELinux user or role set"
        )
        check(
            selinux.get("type")
            in (None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"),
            f"{name}: SELinux type {selinux.get('type')}",
        )
        apparmor = context.get("appArmorProfile") or pod_context.get("appArmorProfile") or {}
        check(apparmor.get("type") in (None, "RuntimeDefault", "Localhost"), f"{name}: AppArmor {apparmor}")
        capabilities = context.get("capabilities") or {}
        check("ALL" in (capabilities.get("drop") or []), f"{name}: capabilities not dropping ALL")
        check(
            set(capabilities.get("add") or []) <= {"NET_BIND_SERVICE"},
            f"{name}: capabilities added {capabilities.get('add')}",
        )
        check(context.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation not false")
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        check(non_root is True, f"{name}: runAsNonRoot not true")
        check(context.get("runAsUser", pod_context.get("runAsUser")) != 0, f"{name}: runAsUser 0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        check(seccomp in ("RuntimeDefault", "Localhost"), f"{name}: seccompProfile {seccomp}")
    check(pod_context.get("runAsUser") != 0, "pod runAsUser 0")
    return found
