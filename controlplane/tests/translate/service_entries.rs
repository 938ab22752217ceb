//! ServiceEntry → Services and Workloads.

use proto::istio::workload::{AppProtocol, TunnelProtocol, load_balancing};

use crate::support::{ip, service_of, translate, view_of, workload_of};

#[test]
fn service_entry() {
    assert_snapshot!(view_of("service_entry"));
    let (s, diags) = translate("service_entry");

    // DNS without endpoints: an allocated VIP per host, the host as the workload's hostname.
    let httpbin = service_of(&s, "egress/httpbin.org");
    assert_eq!(httpbin.name, "httpbin-ext");
    assert!(!httpbin.canonical);
    assert_eq!(httpbin.addresses.len(), 1);
    let vip = ip(&httpbin.addresses[0].address);
    assert!(vip.starts_with("240.240."), "{vip}");
    let www = ip(&service_of(&s, "egress/www.httpbin.org").addresses[0].address);
    assert_ne!(vip, www, "one VIP per host");
    assert_eq!(httpbin.ports[0].app_protocol, AppProtocol::Http11 as i32);
    let w = workload_of(
        &s,
        "Kubernetes/networking.istio.io/ServiceEntry/egress/httpbin-ext/httpbin.org",
    );
    assert_eq!(w.hostname, "httpbin.org");
    assert!(w.addresses.is_empty());
    assert_eq!(w.tunnel_protocol, TunnelProtocol::None as i32);
    assert_eq!(w.services["egress/httpbin.org"].ports[0].target_port, 80);

    // STATIC: IP endpoints, per-endpoint target port, weight as capacity, selector policy.
    let payments = service_of(&s, "shop/payments.internal");
    assert_eq!(ip(&payments.addresses[0].address), "10.200.0.10");
    assert_eq!(payments.ports[0].target_port, 9443);
    let db = workload_of(
        &s,
        "Kubernetes/networking.istio.io/ServiceEntry/shop/payments/192.0.2.10",
    );
    assert_eq!(db.service_account, "payments");
    assert_eq!(db.capacity, Some(3));
    assert_eq!(db.canonical_name, "payments");
    assert_eq!(db.canonical_revision, "v2");
    assert_eq!(db.authorization_policies, ["shop/db-only"]);
    let other = workload_of(
        &s,
        "Kubernetes/networking.istio.io/ServiceEntry/shop/payments/192.0.2.11",
    );
    assert_eq!(
        other.services["shop/payments.internal"].ports[0].target_port,
        19443
    );
    assert_eq!(other.network, "vm-net");
    assert_eq!(other.service_account, "default");

    // DNS endpoints by name; a CIDR address keeps its prefix length.
    let partner = service_of(&s, "shop/api.partner.example");
    assert_eq!(partner.addresses[0].length, Some(24));
    assert_eq!(
        partner.subject_alt_names,
        ["spiffe://partner.example/ns/api/sa/gateway"]
    );
    assert_eq!(
        workload_of(
            &s,
            "Kubernetes/networking.istio.io/ServiceEntry/shop/partner-api/eu.api.partner.example"
        )
        .hostname,
        "eu.api.partner.example"
    );

    // NONE: passthrough, no VIP allocated, no workloads.
    let legacy = service_of(&s, "shop/legacy.example");
    assert!(legacy.addresses.is_empty());
    assert_eq!(
        legacy.load_balancing.as_ref().map(|lb| lb.mode),
        Some(load_balancing::Mode::Passthrough as i32)
    );
    assert!(!s.addresses.keys().any(|k| k.contains("/passthrough/")));

    // The broken entry: its good endpoint is sent, the rest is reported.
    assert!(
        s.addresses
            .contains_key("Kubernetes/networking.istio.io/ServiceEntry/shop/broken/192.0.2.99")
    );
    let found: Vec<String> = diags.iter().map(|d| format!("{}", d.finding)).collect();
    assert_eq!(diags.len(), 3, "{found:#?}");
    assert!(
        found
            .iter()
            .any(|f| f.contains("\"db.example\" is not an IP address"))
    );
    assert!(found.iter().any(|f| f.contains("\"not-an-ip\" is neither")));
    assert!(found.iter().any(|f| f.contains("workloadSelector")));
}

#[test]
fn allocated_vips_do_not_move_when_other_entries_come() {
    use controlplane::k8s::Cluster;
    use controlplane::translate::{TranslateOptions, translate_with_diagnostics};

    let entry = |name: &str, host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, \
             namespace: egress}}\nspec: {{hosts: [{host}], resolution: DNS, ports: [{{number: 80, \
             name: http}}]}}\n---\n"
        )
    };
    let vip_of = |yaml: &str, key: &str| {
        let cluster = Cluster::from_yaml_str(yaml).cluster;
        let (s, _) = translate_with_diagnostics(&cluster, &TranslateOptions::default());
        ip(&service_of(&s, key).addresses[0].address)
    };
    let one = entry("b", "b.example");
    let before = vip_of(&one, "egress/b.example");
    let more = format!(
        "{}{one}{}",
        entry("a", "a.example"),
        entry("c", "c.example")
    );
    assert_eq!(vip_of(&more, "egress/b.example"), before);
}
