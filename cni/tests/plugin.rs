//! The real `ambient-cni` binary: versions, passthrough, errors, skip rules, fail-closed.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::temp_dir;
use serde_json::{Value, json};

struct Run {
    stdout: String,
    code: i32,
}

fn plugin(env: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambient-cni"));
    cmd.env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        stdout: String::from_utf8(out.stdout).unwrap(),
        code: out.status.code().unwrap_or(-1),
    }
}

fn add_env(args: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", args),
    ]
}

fn error_of(r: &Run) -> Value {
    assert_ne!(r.code, 0, "expected failure, got {}", r.stdout);
    let v: Value = serde_json::from_str(&r.stdout).expect("error JSON on stdout");
    assert!(
        v["code"].as_u64().is_some() && v["msg"].is_string() && v["cniVersion"].is_string(),
        "{v}"
    );
    v
}

fn prev(version: &str) -> String {
    if version.starts_with("0.") {
        format!(
            r#"{{"cniVersion":"{version}","interfaces":[{{"name":"eth0"}}],"ips":[{{"version":"4","address":"10.1.0.5/24","gateway":"10.1.0.1","interface":0}}],"dns":{{}}}}"#
        )
    } else {
        format!(
            r#"{{ "cniVersion" : "{version}", "interfaces":[{{"name":"eth0","sandbox":"/var/run/netns/x"}}], "ips":[{{"address":"10.1.0.5/24","gateway":"10.1.0.1","interface":0}}], "zz":1, "aa":[] }}"#
        )
    }
}

fn conf(version: &str, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"k8s","type":"ambient-cni","cni_agent_run_dir":"/nonexistent","pod_namespace":"istio-system","exclude_namespaces":["kube-system"]{extra},"prevResult":{}}}"#,
        prev(version)
    )
}

const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[test]
fn version_command_lists_all_versions() {
    for v in VERSIONS {
        let r = plugin(
            &[("CNI_COMMAND", "VERSION")],
            &format!(r#"{{"cniVersion":"{v}"}}"#),
        );
        assert_eq!(r.code, 0);
        let out: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(out["cniVersion"], *v);
        assert_eq!(out["supportedVersions"], json!(VERSIONS));
    }
}

#[test]
fn add_without_pod_args_passes_prev_result_through_byte_for_byte() {
    for v in VERSIONS {
        let r = plugin(&add_env("IgnoreUnknown=1"), &conf(v, ""));
        assert_eq!(r.code, 0, "{v}: {}", r.stdout);
        assert_eq!(r.stdout, prev(v), "{v}");
    }
}

#[test]
fn add_without_prev_result_prints_empty_result_of_the_version() {
    let r = plugin(
        &add_env(""),
        r#"{"cniVersion":"1.0.0","name":"n","type":"ambient-cni"}"#,
    );
    assert_eq!(r.code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap(),
        json!({"cniVersion":"1.0.0"})
    );
    let r = plugin(
        &add_env(""),
        r#"{"cniVersion":"0.3.1","name":"n","type":"ambient-cni"}"#,
    );
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap(),
        json!({"cniVersion":"0.3.1","ips":[],"dns":{}})
    );
}

#[test]
fn del_check_gc_status() {
    for v in VERSIONS {
        let r = plugin(
            &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c")],
            &conf(v, ""),
        );
        assert_eq!((r.code, r.stdout.as_str()), (0, ""), "DEL {v}");
    }
    let r = plugin(&[("CNI_COMMAND", "CHECK")], &conf("1.0.0", ""));
    assert_eq!(r.code, 0);
    assert_eq!(
        error_of(&plugin(&[("CNI_COMMAND", "CHECK")], &conf("0.3.1", "")))["code"],
        1
    );
    assert_eq!(
        plugin(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0", "")).code,
        0
    );
    assert_eq!(plugin(&[("CNI_COMMAND", "GC")], &conf("1.1.0", "")).code, 0);
    assert_eq!(
        error_of(&plugin(&[("CNI_COMMAND", "GC")], &conf("1.0.0", "")))["code"],
        1
    );
}

#[test]
fn malformed_input_gives_cni_errors() {
    let e = error_of(&plugin(&[], &conf("1.0.0", "")));
    assert_eq!(e["code"], 4, "missing CNI_COMMAND");
    let e = error_of(&plugin(&[("CNI_COMMAND", "FROB")], &conf("1.0.0", "")));
    assert_eq!(e["code"], 4, "unknown command");
    let e = error_of(&plugin(&add_env(""), "{not json"));
    assert_eq!(e["code"], 6);
    let e = error_of(&plugin(&add_env(""), ""));
    assert_eq!(e["code"], 6);
    let e = error_of(&plugin(
        &add_env(""),
        r#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#,
    ));
    assert_eq!(e["code"], 1);
    assert_eq!(e["cniVersion"], "9.9.9");
    let e = error_of(&plugin(
        &add_env(""),
        r#"{"cniVersion":"1.0.0","name":"n","type":"t","enablement_selectors":[{"podSelector":{"matchExpressions":[{"key":"a","operator":"Nope"}]}}]}"#,
    ));
    assert_eq!(e["code"], 7);
    let e = error_of(&plugin(&[("CNI_COMMAND", "ADD")], &conf("1.0.0", "")));
    assert_eq!(e["code"], 4, "missing CNI_NETNS");
    let e = error_of(&plugin(
        &add_env(""),
        r#"{"cniVersion":"1.0.0","name":"n","type":"t","ambient_enabled":"yes"}"#,
    ));
    assert_eq!(e["code"], 6);
}

fn write_pod(dir: &Path, ns: &str, name: &str, labels: &str) {
    std::fs::write(
        dir.join(format!("{ns}-{name}.yaml")),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  uid: uid-{name}\n  labels: {labels}\nspec:\n  nodeName: n1\n"
        ),
    )
    .unwrap();
}

fn write_ns(dir: &Path, ns: &str, labels: &str) {
    std::fs::write(
        dir.join(format!("ns-{ns}.yaml")),
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {labels}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n"),
    )
    .unwrap();
}

#[test]
fn fail_closed_for_ambient_pods_only() {
    let dir = temp_dir("plugin-src");
    write_ns(&dir, "amb", "{istio.io/dataplane-mode: ambient}");
    write_ns(&dir, "plain", "{}");
    write_pod(&dir, "amb", "a", "{}");
    write_pod(&dir, "amb", "optout", "{istio.io/dataplane-mode: none}");
    write_pod(&dir, "plain", "b", "{}");
    write_pod(&dir, "plain", "c", "{istio.io/dataplane-mode: ambient}");
    let extra = format!(r#","pod_source_dir":"{}""#, dir.display());
    let c = conf("1.0.0", &extra);
    let run = |ns: &str, name: &str| {
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}");
        plugin(&add_env(&args), &c)
    };
    // Ambient (namespace label, pod label) with no agent: ADD fails.
    for (ns, name) in [("amb", "a"), ("plain", "c")] {
        let e = error_of(&run(ns, name));
        assert_eq!(e["code"], 11, "{e}");
        assert!(
            e["details"].as_str().unwrap().contains("pluginevent.sock"),
            "{e}"
        );
    }
    // Not ambient: success, prevResult passed through.
    for (ns, name) in [("plain", "b"), ("amb", "optout")] {
        let r = run(ns, name);
        assert_eq!(r.code, 0, "{ns}/{name}: {}", r.stdout);
        assert_eq!(r.stdout, prev("1.0.0"));
    }
    // Skip rules: excluded namespace, the agent's own pods.
    write_pod(
        &dir,
        "kube-system",
        "k",
        "{istio.io/dataplane-mode: ambient}",
    );
    write_pod(
        &dir,
        "istio-system",
        "istio-cni-node-xyz",
        "{istio.io/dataplane-mode: ambient}",
    );
    assert_eq!(run("kube-system", "k").code, 0);
    assert_eq!(run("istio-system", "istio-cni-node-xyz").code, 0);
    // ambient_enabled=false: skip.
    let off = conf("1.0.0", &format!(r#"{extra},"ambient_enabled":false"#));
    let r = plugin(&add_env("K8S_POD_NAMESPACE=amb;K8S_POD_NAME=a"), &off);
    assert_eq!(r.code, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_pod_is_treated_as_not_ambient_unless_retry_is_on() {
    let dir = temp_dir("plugin-unknown");
    let extra = format!(r#","pod_source_dir":"{}""#, dir.display());
    let r = plugin(
        &add_env("K8S_POD_NAMESPACE=x;K8S_POD_NAME=y"),
        &conf("0.4.0", &extra),
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.stdout, prev("0.4.0"));
    let _ = std::fs::remove_dir_all(&dir);
}
