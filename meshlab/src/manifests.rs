//! Kubernetes manifests for the lab's built-in apps, as the e2e suite, the benchmark and
//! scripted demos write them (the tour's own YAML lives in `examples/demo/`).

/// A ServiceAccount, a Service `name:port → targetPort`, and a one-replica Deployment of
/// `image` pinned to `node` (labels `app: <name>`, `version: v1`; the app listens on
/// `targetPort`).
pub fn app(ns: &str, name: &str, image: &str, node: &str, ports: Option<(u16, u16)>) -> String {
    let svc = ports
        .map(|(port, target)| {
            format!(
                "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}
spec:
  ports: [{{name: http, port: {port}, targetPort: {target}}}]
  selector: {{app: {name}}}
"
            )
        })
        .unwrap_or_default();
    let container_port = ports
        .map(|(_, target)| format!(", ports: [{{containerPort: {target}}}]"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}, namespace: {ns}}}
{svc}---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, version: v1}}}}
    spec:
      serviceAccountName: {name}
      nodeName: {node}
      containers:
      - {{name: {name}, image: {image}{container_port}}}
"
    )
}

/// `sleep` (a curl client) on `client_node` and `httpbin:8000` (→ 80) on `server_node`, in `ns`.
pub fn sleep_and_httpbin(ns: &str, client_node: &str, server_node: &str) -> String {
    format!(
        "{}---\n{}",
        app(ns, "sleep", "curlimages/curl", client_node, None),
        app(
            ns,
            "httpbin",
            "docker.io/kennethreitz/httpbin",
            server_node,
            Some((8000, 80))
        )
    )
}

/// A namespace with labels (`k: v` pairs).
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{}}}}}\n",
        labels.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects;

    #[test]
    fn manifests_parse_as_the_lab_applies_them() {
        let yaml = format!(
            "{}---\n{}",
            namespace("shop", &[("istio.io/dataplane-mode", "ambient")]),
            sleep_and_httpbin("shop", "node0", "node1")
        );
        let objs = objects::parse(&yaml, "test").unwrap();
        let kinds: Vec<(&str, &str)> = objs
            .iter()
            .map(|o| (objects::kind(&o.value), objects::name(&o.value)))
            .collect();
        assert_eq!(
            kinds,
            [
                ("Namespace", "shop"),
                ("ServiceAccount", "sleep"),
                ("Deployment", "sleep"),
                ("ServiceAccount", "httpbin"),
                ("Service", "httpbin"),
                ("Deployment", "httpbin"),
            ]
        );
        let ns = &objs[0].value;
        assert_eq!(
            objects::labels(ns)
                .get("istio.io/dataplane-mode")
                .map(String::as_str),
            Some("ambient")
        );
    }
}
