"""Invariants of the rendered charts, checked by charts-check.py for every values file.

Each check takes the rendered objects and the effective values (chart defaults merged with the
values file) and returns a list of problems (empty = fine). They encode the facts of Istio's
ztunnel and istio-cni charts that the mesh depends on (shared/reference/inpod-and-cni.md §5).
"""

from __future__ import annotations

from typing import Any, Callable

import yaml

Obj = dict[str, Any]

# A node agent must run on every node: these tolerations together tolerate every taint.
EVERY_TAINT = [
    {"effect": "NoSchedule", "operator": "Exists"},
    {"key": "CriticalAddonsOnly", "operator": "Exists"},
    {"effect": "NoExecute", "operator": "Exists"},
]


def find(objects: list[Obj], kind: str, name: str) -> Obj | None:
    for o in objects:
        if o.get("kind") == kind and o.get("metadata", {}).get("name") == name:
            return o
    return None


class Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def eq(self, what: str, got: Any, want: Any) -> None:
        if got != want:
            self.problems.append(f"{what}: got {got!r}, want {want!r}")

    def true(self, what: str, cond: bool) -> None:
        if not cond:
            self.problems.append(what)


def tolerates_every_taint(tolerations: list[Obj]) -> bool:
    if any(t.get("operator") == "Exists" and not t.get("key") and not t.get("effect") for t in tolerations):
        return True
    return all(t in tolerations for t in EVERY_TAINT)


def common_node_agent(c: Checker, ds: Obj, values: Obj, container: Obj) -> None:
    pod = ds["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"].get("labels", {})
    c.eq("pod label istio.io/dataplane-mode", labels.get("istio.io/dataplane-mode"), "none")
    c.eq("pod label sidecar.istio.io/inject", labels.get("sidecar.istio.io/inject"), "false")
    c.true(
        "selector labels must be on the pod template",
        all(labels.get(k) == v for k, v in ds["spec"]["selector"]["matchLabels"].items()),
    )
    c.eq("priorityClassName", spec.get("priorityClassName"), values["priorityClassName"])
    c.eq("terminationGracePeriodSeconds", spec.get("terminationGracePeriodSeconds"), values["terminationGracePeriodSeconds"])
    c.eq("nodeSelector", spec.get("nodeSelector"), values["nodeSelector"] or None)
    c.true(f"tolerations must tolerate every taint: {spec.get('tolerations')}", tolerates_every_taint(spec.get("tolerations", [])))
    c.eq("container resources", container.get("resources"), values["resources"])
    image = values["image"]
    c.true(
        f"image {container['image']} must be {image['hub']}/{image['repository']}:<tag>",
        container["image"].startswith(f"{image['hub']}/{image['repository']}:"),
    )
    annotations = pod["metadata"].get("annotations", {})
    c.eq("prometheus.io/scrape", annotations.get("prometheus.io/scrape"), "true")
    c.eq("prometheus.io/port matches a declared containerPort", int(annotations.get("prometheus.io/port", 0)) in
         [p["containerPort"] for p in container.get("ports", [])], True)


def env_map(container: Obj) -> dict[str, Obj]:
    out: dict[str, Obj] = {}
    for e in container.get("env", []):
        out[e["name"]] = e
    return out


def mounts_by_volume(spec: Obj, container: Obj) -> dict[str, tuple[Obj, Obj]]:
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return {m["name"]: (m, volumes.get(m["name"], {})) for m in container.get("volumeMounts", [])}


def check_ztunnel(objects: list[Obj], values: Obj) -> list[str]:
    c = Checker()
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    c.eq("objects", kinds, ["DaemonSet/ztunnel", "ServiceAccount/ztunnel"])
    ds = find(objects, "DaemonSet", "ztunnel")
    if ds is None:
        return c.problems
    spec = ds["spec"]["template"]["spec"]
    containers = spec["containers"]
    c.eq("containers", [x["name"] for x in containers], ["istio-proxy"])
    z = containers[0]
    common_node_agent(c, ds, values, z)
    labels = ds["spec"]["template"]["metadata"]["labels"]
    c.eq("pod label app", labels.get("app"), "ztunnel")
    c.eq("pod label app.kubernetes.io/name", labels.get("app.kubernetes.io/name"), "ztunnel")
    c.eq("prometheus.io/port", ds["spec"]["template"]["metadata"]["annotations"].get("prometheus.io/port"), "15020")
    c.true("ztunnel must not use hostNetwork", not spec.get("hostNetwork", False))
    c.eq("serviceAccountName", spec.get("serviceAccountName"), "ztunnel")
    c.eq("updateStrategy", ds["spec"].get("updateStrategy"),
         {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    sc = z.get("securityContext", {})
    c.eq("capabilities", sc.get("capabilities"), {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]})
    c.eq("readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem"), True)
    c.eq("privileged", sc.get("privileged"), False)
    c.eq("runAsUser/runAsGroup", (sc.get("runAsUser"), sc.get("runAsGroup")), (0, 1337))
    c.eq("readinessProbe", z.get("readinessProbe", {}).get("httpGet"), {"path": "/healthz/ready", "port": 15021})
    c.eq("ports", z.get("ports"), [{"name": "ztunnel-stats", "containerPort": 15020, "protocol": "TCP"}])

    env = env_map(z)
    rev = values["revision"]
    istiod = f"istiod{'-' + rev if rev else ''}.{values['istioNamespace']}.svc:15012"
    c.eq("XDS_ADDRESS", env.get("XDS_ADDRESS", {}).get("value"), values["xdsAddress"] or istiod)
    c.eq("CA_ADDRESS", env.get("CA_ADDRESS", {}).get("value"), values["caAddress"] or istiod)
    c.eq("ISTIO_META_CLUSTER_ID", env.get("ISTIO_META_CLUSTER_ID", {}).get("value"), values["clusterId"])
    c.eq("TRUST_DOMAIN", env.get("TRUST_DOMAIN", {}).get("value"), values["trustDomain"])
    c.eq("INPOD_ENABLED", env.get("INPOD_ENABLED", {}).get("value"), "true")
    c.eq("RUST_LOG", env.get("RUST_LOG", {}).get("value"), values["logLevel"])
    c.eq("RUST_BACKTRACE", env.get("RUST_BACKTRACE", {}).get("value"), "1")
    c.eq("TERMINATION_GRACE_PERIOD_SECONDS", env.get("TERMINATION_GRACE_PERIOD_SECONDS", {}).get("value"),
         str(spec.get("terminationGracePeriodSeconds")))
    c.eq("LOG_FORMAT", env.get("LOG_FORMAT", {}).get("value"), "json" if values["logAsJson"] else None)
    c.eq("NETWORK", env.get("NETWORK", {}).get("value"), values["network"] or None)
    c.eq("CRL_PATH", env.get("CRL_PATH", {}).get("value"),
         "/var/run/secrets/istio/crl/ca-crl.pem" if values["crl"]["enabled"] else None)
    for name, path in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
                       ("NODE_NAME", "spec.nodeName"), ("INSTANCE_IP", "status.podIP"),
                       ("SERVICE_ACCOUNT", "spec.serviceAccountName")]:
        c.eq(f"{name} downward API", env.get(name, {}).get("valueFrom"), {"fieldRef": {"fieldPath": path}})
    c.eq("ZTUNNEL_CPU_LIMIT", env.get("ZTUNNEL_CPU_LIMIT", {}).get("valueFrom"),
         {"resourceFieldRef": {"resource": "limits.cpu"}})
    for name, value in values["env"].items():
        c.eq(f"extra env {name}", env.get(name, {}).get("value"), value)

    mounts = mounts_by_volume(spec, z)
    token = mounts.get("istio-token", ({}, {}))
    c.eq("istio-token mount", token[0].get("mountPath"), "/var/run/secrets/tokens")
    c.eq("istio-token projection", token[1].get("projected", {}).get("sources"),
         [{"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}])
    ca = mounts.get("istiod-ca-cert", ({}, {}))
    c.eq("root cert mount", (ca[0].get("mountPath"), ca[1].get("configMap", {}).get("name")),
         ("/var/run/secrets/istio", "istio-ca-root-cert"))
    sock = mounts.get("cni-ztunnel-sock-dir", ({}, {}))
    c.eq("ZDS socket dir", (sock[0].get("mountPath"), sock[1].get("hostPath")),
         ("/var/run/ztunnel", {"path": "/var/run/ztunnel", "type": "DirectoryOrCreate"}))
    tmp = mounts.get("tmp", ({}, {}))
    c.eq("tmp emptyDir", (tmp[0].get("mountPath"), "emptyDir" in tmp[1]), ("/tmp", True))
    return c.problems


CNI_MOUNTS = {
    # mountPath: (hostPath, readOnly, mountPropagation)
    "/host/opt/cni/bin": (None, None, None),
    "/host/etc/cni/net.d": (None, None, None),
    "/host/proc": ("/proc", True, None),
    "/host/var/run/netns": ("/var/run/netns", None, "HostToContainer"),
    "/var/run/istio-cni": ("/var/run/istio-cni", None, None),
    "/var/run/ztunnel": ("/var/run/ztunnel", None, None),
}


def check_cni(objects: list[Obj], values: Obj) -> list[str]:
    c = Checker()
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    role = f"ambient-cni-{'istio-system'}"
    c.eq("objects", kinds, sorted([
        "ConfigMap/ambient-cni-config", "DaemonSet/ambient-cni-node", "ServiceAccount/ambient-cni",
        f"ClusterRole/{role}", f"ClusterRoleBinding/{role}",
    ]))
    cr = find(objects, "ClusterRole", role)
    if cr is not None:
        c.eq("ClusterRole rules", cr.get("rules"), [
            {"apiGroups": [""], "resources": ["pods", "namespaces", "nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
        ])
    crb = find(objects, "ClusterRoleBinding", role)
    if crb is not None:
        c.eq("ClusterRoleBinding subjects", crb.get("subjects"),
             [{"kind": "ServiceAccount", "name": "ambient-cni", "namespace": "istio-system"}])
    cm = find(objects, "ConfigMap", "ambient-cni-config")
    if cm is not None:
        data = cm.get("data", {})
        amb = values["ambient"]
        want = {
            "AMBIENT_DNS_CAPTURE": str(amb["dnsCapture"]).lower(),
            "AMBIENT_IPV6": str(amb["ipv6"]).lower(),
            "AMBIENT_RECONCILE_POD_RULES_ON_STARTUP": str(amb["reconcilePodRulesOnStartup"]).lower(),
            "EXCLUDE_NAMESPACES": ",".join(values["excludeNamespaces"]),
            "NATIVE_NFTABLES": str(values["nativeNftables"]).lower(),
        }
        c.eq("ConfigMap keys", sorted(data), sorted([*want, "AMBIENT_ENABLEMENT_SELECTOR"]))
        for k, v in want.items():
            c.eq(f"ConfigMap {k}", data.get(k), v)
        c.eq("AMBIENT_ENABLEMENT_SELECTOR round trip", yaml.safe_load(data.get("AMBIENT_ENABLEMENT_SELECTOR", "")),
             amb["enablementSelectors"])
    ds = find(objects, "DaemonSet", "ambient-cni-node")
    if ds is None:
        return c.problems
    spec = ds["spec"]["template"]["spec"]
    containers = spec["containers"]
    c.eq("containers", [x["name"] for x in containers], ["cni-agent"])
    a = containers[0]
    common_node_agent(c, ds, values, a)
    c.eq("prometheus.io/port", ds["spec"]["template"]["metadata"]["annotations"].get("prometheus.io/port"), "15014")
    c.eq("hostNetwork", spec.get("hostNetwork", False), values["hostNetwork"])
    c.eq("serviceAccountName", spec.get("serviceAccountName"), "ambient-cni")
    sc = a.get("securityContext", {})
    c.eq("capabilities", sc.get("capabilities"),
         {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "SYS_PTRACE", "SYS_ADMIN", "DAC_OVERRIDE"]})
    c.eq("privileged", sc.get("privileged"), False)
    c.eq("readinessProbe", a.get("readinessProbe", {}).get("httpGet"), {"path": "/readyz", "port": 8000})
    c.eq("command", a.get("command"), ["cni-agent"])
    args = a.get("args", [])
    c.true(f"agent args must contain --install: {args}", "--install" in args)
    for flag, value in [("--cni-bin-dir", "/host/opt/cni/bin"), ("--cni-conf-dir", "/host/etc/cni/net.d"),
                        ("--pod-source", "kube"), ("--run-dir", "/var/run/istio-cni"),
                        ("--ztunnel-socket", "/var/run/ztunnel/ztunnel.sock")]:
        pairs = list(zip(args, args[1:]))
        c.true(f"agent args must contain {flag} {value}: {args}", (flag, value) in pairs)
    c.eq("envFrom", a.get("envFrom"), [{"configMapRef": {"name": "ambient-cni-config"}}])
    env = env_map(a)
    c.eq("NODE_NAME downward API", env.get("NODE_NAME", {}).get("valueFrom"), {"fieldRef": {"fieldPath": "spec.nodeName"}})
    c.eq("RUST_LOG", env.get("RUST_LOG", {}).get("value"), values["logLevel"])
    mounts = {m["mountPath"]: (m, v) for m, v in mounts_by_volume(spec, a).values()}
    c.eq("mount paths", sorted(mounts), sorted(CNI_MOUNTS))
    host_dirs = {"/host/opt/cni/bin": values["cniBinDir"], "/host/etc/cni/net.d": values["cniConfDir"]}
    for path, (host, ro, prop) in CNI_MOUNTS.items():
        m, v = mounts.get(path, ({}, {}))
        c.eq(f"{path} hostPath", v.get("hostPath", {}).get("path"), host or host_dirs[path])
        c.eq(f"{path} readOnly", m.get("readOnly"), ro)
        c.eq(f"{path} mountPropagation", m.get("mountPropagation"), prop)
    return c.problems


CHECKS: dict[str, Callable[[list[Obj], Obj], list[str]]] = {
    "ztunnel": check_ztunnel,
    "cni": check_cni,
}
