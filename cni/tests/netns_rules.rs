//! Network-namespace tests of `cni::rules`: the rules really installed by the tools, their
//! idempotency and removal, the redirects they cause, and the node-side probe SNAT sets.
//!
//! Root and the tools of `make setup` (iptables, nftables, ipset, util-linux, iproute2) are
//! required; without them these tests FAIL. Every namespace is removed by a Drop guard.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cni::rules::{
    Backend, HostProbeRules, PodRuleConfig, apply_pod_rules, pod_rules_present, remove_pod_rules,
    render_pod_rules,
};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};
use nix::sys::time::TimeVal;

// ---------------------------------------------------------------- namespace plumbing

/// A named netns (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: &str) -> Netns {
        assert!(
            nix::unistd::geteuid().is_root(),
            "netns tests need root (run as root, after `make setup`)"
        );
        // Leftover of an interrupted run.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name]);
        let ns = Netns { name: name.into() };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace; panics on failure.
    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that entered the namespace.
    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = std::fs::File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog} (run `make setup`): {e}"));
    assert!(
        out.status.success(),
        "`{prog} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

// ---------------------------------------------------------------- state extraction

/// Our part of iptables text: `(table, chain)` → rules, for ISTIO_* chains and for the
/// jumps into them. Works on `iptables-save` output and on rendered restore text alike.
fn iptables_ours(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut ours = BTreeMap::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(decl) = line.strip_prefix(":ISTIO_") {
            let chain = format!("ISTIO_{}", decl.split_whitespace().next().unwrap());
            ours.entry((table.clone(), chain)).or_insert_with(Vec::new);
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap().to_string();
            if chain.starts_with("ISTIO_") || line.contains(" -j ISTIO_") {
                ours.entry((table.clone(), chain))
                    .or_insert_with(Vec::new)
                    .push(line.to_string());
            }
        }
    }
    ours
}

fn assert_iptables_match(ns: &Netns, cfg: &PodRuleConfig) {
    let rendered = render_pod_rules(cfg);
    let v4 = ns.exec(&["iptables-save"]);
    let v6 = ns.exec(&["ip6tables-save"]);
    assert_eq!(
        iptables_ours(&v4),
        iptables_ours(&rendered.iptables_v4),
        "v4:\n{v4}"
    );
    assert_eq!(
        iptables_ours(&v6),
        iptables_ours(&rendered.iptables_v6),
        "v6:\n{v6}"
    );
}

/// `counter packets 3 bytes 180` → `counter`.
fn strip_counters(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        match line.find("counter packets ") {
            Some(i) => {
                let rest = &line[i + "counter packets ".len()..];
                let after = rest
                    .split_once(" bytes ")
                    .map(|(_, r)| r.split_once(' ').map_or("", |(_, r)| r))
                    .unwrap_or("");
                out.push_str(&line[..i]);
                out.push_str("counter");
                if !after.is_empty() {
                    out.push(' ');
                    out.push_str(after);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The `table inet <name> { ... }` block of a rendered script.
fn rendered_block(script: &str, name: &str) -> Option<String> {
    let start = script.find(&format!("table inet {name} {{\n"))?;
    let end = script[start..].find("\n}\n")? + start + 3;
    Some(script[start..end].to_string())
}

const NFT_TABLES: [&str; 3] = [
    "istio-ambient-nat",
    "istio-ambient-mangle",
    "istio-ambient-raw",
];

fn assert_nft_match(ns: &Netns, cfg: &PodRuleConfig) {
    let script = render_pod_rules(cfg).nft;
    let tables = ns.exec(&["nft", "list", "tables"]);
    for name in NFT_TABLES {
        let listed = tables.lines().any(|l| l == format!("table inet {name}"));
        match rendered_block(&script, name) {
            Some(block) => {
                assert!(listed, "{name} missing");
                let live = strip_counters(&ns.exec(&["nft", "list", "table", "inet", name]));
                assert_eq!(live, block, "table {name}");
            }
            None => assert!(!listed, "{name} should not exist"),
        }
    }
}

fn netlink_state(ns: &Netns) -> String {
    let table100 = |fam: &str| {
        ns.exec(&["ip", fam, "route", "show", "table", "all"])
            .lines()
            .filter(|l| l.contains("table 100"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    [
        ns.exec(&["ip", "rule"]),
        ns.exec(&["ip", "-6", "rule"]),
        table100("-4"),
        table100("-6"),
    ]
    .join("--\n")
}

fn assert_netlink_installed(ns: &Netns) {
    // What `ip route replace local 0.0.0.0/0 dev lo table 100` (and `local ::/0`) shows.
    for (fam, route) in [
        ("-4", "local default dev lo scope host"),
        ("-6", "local default dev lo metric 1024 pref medium"),
    ] {
        let rules = ns.exec(&["ip", fam, "rule"]);
        let ours: Vec<&str> = rules.lines().filter(|l| l.starts_with("32764:")).collect();
        assert_eq!(
            ours,
            ["32764:\tfrom all fwmark 0x111/0xfff lookup 100"],
            "{fam}: {rules}"
        );
        let routes = ns.exec(&["ip", fam, "route", "show", "table", "100"]);
        assert_eq!(
            routes.lines().map(str::trim).collect::<Vec<_>>(),
            [route],
            "{fam}"
        );
    }
}

// ---------------------------------------------------------------- apply / remove

fn dual_stack(backend: Backend) -> PodRuleConfig {
    PodRuleConfig {
        backend,
        reroute_interfaces: vec!["tun7".into()],
        ..PodRuleConfig::default()
    }
}

#[test]
fn netns_iptables_apply_idempotent_and_remove() {
    let ns = Netns::new("cnirules-ipt");
    ns.exec(&[
        "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-j", "ACCEPT",
    ]);
    let netlink_before = netlink_state(&ns);
    let path = ns.path();
    assert!(!pod_rules_present(&path).unwrap());

    let cfg = dual_stack(Backend::Iptables);
    apply_pod_rules(&path, &cfg).expect("apply");
    assert_iptables_match(&ns, &cfg);
    assert_netlink_installed(&ns);
    assert!(pod_rules_present(&path).unwrap());

    // Twice: converges, no duplicate.
    apply_pod_rules(&path, &cfg).expect("re-apply");
    assert_iptables_match(&ns, &cfg);
    assert_netlink_installed(&ns);

    // A different config replaces the old one (raw table and inbound rules go, v6 goes).
    let smaller = PodRuleConfig {
        ipv6: false,
        dns_capture: false,
        bypass_inbound: true,
        reroute_interfaces: vec![],
        ..cfg.clone()
    };
    apply_pod_rules(&path, &smaller).expect("apply smaller");
    assert_iptables_match(&ns, &smaller);
    assert!(!ns.exec(&["ip", "-6", "rule"]).contains("32764:"));
    apply_pod_rules(&path, &cfg).expect("back to full");
    assert_iptables_match(&ns, &cfg);

    remove_pod_rules(&path).expect("remove");
    for save in [ns.exec(&["iptables-save"]), ns.exec(&["ip6tables-save"])] {
        assert!(!save.contains("ISTIO"), "{save}");
    }
    let v4 = ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(
        v4.contains("-A OUTPUT -p udp -m udp --dport 9999 -j ACCEPT"),
        "{v4}"
    );
    assert_eq!(netlink_state(&ns), netlink_before);
    assert!(!pod_rules_present(&path).unwrap());
    // Removing again is fine.
    remove_pod_rules(&path).expect("remove twice");
}

#[test]
fn netns_nftables_apply_idempotent_and_remove() {
    let ns = Netns::new("cnirules-nft");
    ns.exec(&["nft", "add table inet foreign; add chain inet foreign c"]);
    let netlink_before = netlink_state(&ns);
    let path = ns.path();

    // Start from the iptables backend: switching must clean it up.
    apply_pod_rules(&path, &dual_stack(Backend::Iptables)).expect("apply iptables");
    let cfg = dual_stack(Backend::Nftables);
    apply_pod_rules(&path, &cfg).expect("apply nft");
    assert_nft_match(&ns, &cfg);
    assert!(!ns.exec(&["iptables-save"]).contains("ISTIO"));
    assert!(!ns.exec(&["ip6tables-save"]).contains("ISTIO"));
    assert_netlink_installed(&ns);
    assert!(pod_rules_present(&path).unwrap());

    apply_pod_rules(&path, &cfg).expect("re-apply");
    assert_nft_match(&ns, &cfg);
    assert_netlink_installed(&ns);

    let no_dns = PodRuleConfig {
        dns_capture: false,
        ..cfg.clone()
    };
    apply_pod_rules(&path, &no_dns).expect("apply without dns");
    assert_nft_match(&ns, &no_dns);

    remove_pod_rules(&path).expect("remove");
    let tables = ns.exec(&["nft", "list", "tables"]);
    assert!(!tables.contains("istio"), "{tables}");
    assert!(tables.contains("table inet foreign"), "{tables}");
    assert_eq!(netlink_state(&ns), netlink_before);
    assert!(!pod_rules_present(&path).unwrap());
    remove_pod_rules(&path).expect("remove twice");
}

#[test]
fn missing_netns_and_bad_config_are_reported() {
    let missing = PathBuf::from("/var/run/netns/cnirules-does-not-exist");
    let err = apply_pod_rules(&missing, &PodRuleConfig::default()).unwrap_err();
    assert!(matches!(err, cni::rules::RulesError::Netns { .. }), "{err}");
    let bad = PodRuleConfig {
        reroute_interfaces: vec!["x y".into()],
        ..PodRuleConfig::default()
    };
    let err = apply_pod_rules(&missing, &bad).unwrap_err();
    assert!(
        matches!(err, cni::rules::RulesError::InvalidConfig(_)),
        "{err}"
    );
}

// ---------------------------------------------------------------- traffic

const TIMEOUT: Duration = Duration::from_secs(5);

fn tv() -> TimeVal {
    TimeVal::new(TIMEOUT.as_secs() as _, 0)
}

/// A TCP connection, optionally from `src` and with `SO_MARK`.
fn connect(src: Option<SocketAddrV4>, dst: SocketAddrV4, mark: Option<u32>) -> TcpStream {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    socket::setsockopt(&fd, sockopt::SendTimeout, &tv()).unwrap();
    if let Some(mark) = mark {
        socket::setsockopt(&fd, sockopt::Mark, &mark).unwrap();
    }
    if let Some(src) = src {
        socket::bind(fd.as_raw_fd(), &SockaddrIn::from(src)).unwrap();
    }
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(dst))
        .unwrap_or_else(|e| panic!("connect to {dst}: {e}"));
    TcpStream::from(fd)
}

fn listen(port: u16) -> TcpListener {
    let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
    socket::setsockopt(&l, sockopt::ReceiveTimeout, &tv()).unwrap();
    l
}

/// `expected` accepts the connection and reads `tag`; every other listener has nothing.
fn assert_landed(expected: &TcpListener, others: &[&TcpListener], tag: &[u8]) -> TcpStream {
    let (mut s, _) = expected
        .accept()
        .expect("expected listener got no connection");
    let mut buf = vec![0; tag.len()];
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf, tag);
    for o in others {
        o.set_nonblocking(true).unwrap();
        assert!(
            o.accept().is_err(),
            "connection landed on the wrong listener too"
        );
        o.set_nonblocking(false).unwrap();
    }
    s
}

fn functional(backend: Backend, ns_prefix: &str, subnet: u8) {
    let pod = Netns::new(&format!("{ns_prefix}-pod"));
    let peer = Netns::new(&format!("{ns_prefix}-peer"));
    let pod_ip = Ipv4Addr::new(10, 249, subnet, 2);
    let peer_ip = Ipv4Addr::new(10, 249, subnet, 1);
    pod.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
    ]);
    pod.exec(&["ip", "addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    pod.exec(&["ip", "route", "add", "default", "via", &peer_ip.to_string()]);
    peer.exec(&["ip", "addr", "add", &format!("{peer_ip}/24"), "dev", "eth0"]);
    peer.exec(&["ip", "addr", "add", "169.254.7.127/32", "dev", "eth0"]);
    peer.exec(&["ip", "link", "set", "eth0", "up"]);

    let cfg = PodRuleConfig {
        backend,
        ..PodRuleConfig::default()
    };
    apply_pod_rules(&pod.path(), &cfg).expect("apply");

    let (outbound, inbound, app, dns) = pod.within(|| {
        let dns = UdpSocket::bind("0.0.0.0:15053").unwrap();
        dns.set_read_timeout(Some(TIMEOUT)).unwrap();
        (listen(15001), listen(15006), listen(8080), dns)
    });
    let remote = peer.within(|| listen(9090));

    // App → remote: redirected to 15001, original destination preserved.
    let dst = SocketAddrV4::new(peer_ip, 9090);
    let mut c = pod.within(move || connect(None, dst, None));
    c.write_all(b"out").unwrap();
    let s = assert_landed(&outbound, &[&remote, &inbound, &app], b"out");
    let orig = socket::getsockopt(&s, sockopt::OriginalDst).unwrap();
    assert_eq!(u16::from_be(orig.sin_port), 9090);
    assert_eq!(Ipv4Addr::from(u32::from_be(orig.sin_addr.s_addr)), peer_ip);

    // ztunnel's own traffic (mark 0x539) is not captured.
    let mut c = pod.within(move || connect(None, dst, Some(0x539)));
    c.write_all(b"marked").unwrap();
    assert_landed(&remote, &[&outbound, &inbound, &app], b"marked");

    // Plaintext inbound: redirected to 15006.
    let pod_app = SocketAddrV4::new(pod_ip, 8080);
    let mut c = peer.within(move || connect(None, pod_app, None));
    c.write_all(b"in").unwrap();
    assert_landed(&inbound, &[&outbound, &app, &remote], b"in");

    // Kubelet probe (source 169.254.7.127): reaches the app untouched.
    let probe_src = SocketAddrV4::new(Ipv4Addr::new(169, 254, 7, 127), 0);
    let mut c = peer.within(move || connect(Some(probe_src), pod_app, None));
    c.write_all(b"probe").unwrap();
    assert_landed(&app, &[&outbound, &inbound, &remote], b"probe");

    // The node side: with the probe SNAT rules installed on the "node" (peer) and the pod's IP
    // in the set, a node-originated connection arrives from 169.254.7.127 and is not captured.
    let host = std::sync::Arc::new(HostProbeRules::new(backend));
    let h = host.clone();
    peer.within(move || {
        h.install()?;
        h.add_pod("pod-uid-1", &[IpAddr::V4(pod_ip)])
    })
    .expect("host probe rules");
    let mut c = peer.within(move || connect(None, pod_app, None));
    c.write_all(b"kubelet").unwrap();
    let s = assert_landed(&app, &[&outbound, &inbound, &remote], b"kubelet");
    assert_eq!(
        s.peer_addr().unwrap().ip(),
        IpAddr::V4(Ipv4Addr::new(169, 254, 7, 127))
    );
    let h = host.clone();
    peer.within(move || h.uninstall()).expect("host uninstall");

    // DNS over UDP: to 15053.
    pod.within(move || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.send_to(b"dns?", (peer_ip, 53)).unwrap();
    });
    let mut buf = [0u8; 16];
    let (n, _) = dns
        .recv_from(&mut buf)
        .expect("DNS query not redirected to 15053");
    assert_eq!(&buf[..n], b"dns?");

    remove_pod_rules(&pod.path()).expect("remove");
    // Without rules the app → remote connection goes to the remote.
    let mut c = pod.within(move || connect(None, dst, None));
    c.write_all(b"plain").unwrap();
    assert_landed(&remote, &[&outbound, &inbound, &app], b"plain");
}

#[test]
fn netns_redirect_traffic_iptables() {
    functional(Backend::Iptables, "cnirules-fi", 81);
}

#[test]
fn netns_redirect_traffic_nftables() {
    functional(Backend::Nftables, "cnirules-fn", 82);
}

// ---------------------------------------------------------------- host probe SNAT

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `(set, ip, comment)` of our sets, sorted.
fn host_sets(node: &Netns, backend: Backend) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for set in ["istio-inpod-probes-v4", "istio-inpod-probes-v6"] {
        match backend {
            Backend::Iptables => {
                for line in node.exec(&["ipset", "save", set]).lines() {
                    let w: Vec<&str> = line.split_whitespace().collect();
                    if w[0] == "add" {
                        assert_eq!(w[3], "comment", "{line}");
                        out.push((set.into(), w[2].into(), w[4].trim_matches('"').into()));
                    }
                }
            }
            Backend::Nftables => {
                let text =
                    node.exec(&["nft", "-j", "list", "set", "inet", "istio-ambient-nat", set]);
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                for item in v["nftables"].as_array().unwrap() {
                    for e in item["set"]["elem"].as_array().into_iter().flatten() {
                        out.push((
                            set.into(),
                            e["elem"]["val"].as_str().unwrap().into(),
                            e["elem"]["comment"].as_str().unwrap().into(),
                        ));
                    }
                }
            }
        }
    }
    out.sort();
    out
}

fn entries(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|(s, i, c)| (s.to_string(), i.to_string(), c.to_string()))
        .collect();
    v.sort();
    v
}

fn host_lifecycle(backend: Backend, name: &str) {
    let node = Netns::new(name);
    node.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "lo",
        "-j",
        "RETURN",
    ]);
    let (v4, v6) = ("istio-inpod-probes-v4", "istio-inpod-probes-v6");
    let rules = std::sync::Arc::new(HostProbeRules::new(backend));
    let r = rules.clone();
    node.within(move || r.install().and_then(|()| r.install()))
        .expect("install twice");

    match backend {
        Backend::Iptables => {
            for (tool, set, to) in [
                ("iptables-save", v4, "169.254.7.127"),
                (
                    "ip6tables-save",
                    v6,
                    "fd16:9254:7127:1337:ffff:ffff:ffff:ffff",
                ),
            ] {
                let save = node.exec(&[tool, "-t", "nat"]);
                let post: Vec<&str> = save
                    .lines()
                    .filter(|l| l.starts_with("-A POSTROUTING"))
                    .collect();
                assert_eq!(post[0], "-A POSTROUTING -j ISTIO_POSTRT", "{save}");
                assert_eq!(
                    post.iter().filter(|l| l.contains("ISTIO")).count(),
                    1,
                    "{save}"
                );
                let chain: Vec<&str> = save
                    .lines()
                    .filter(|l| l.starts_with("-A ISTIO_POSTRT"))
                    .collect();
                assert_eq!(
                    chain,
                    [format!(
                        "-A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set \
                         {set} dst -j SNAT --to-source {to}"
                    )],
                    "{save}"
                );
            }
        }
        Backend::Nftables => {
            let table =
                strip_counters(&node.exec(&["nft", "list", "table", "inet", "istio-ambient-nat"]));
            let rules: Vec<&str> = table.lines().filter(|l| l.contains("snat")).collect();
            assert_eq!(
                rules,
                [
                    "\t\tmeta l4proto tcp meta skuid 0 ip daddr @istio-inpod-probes-v4 counter snat ip to 169.254.7.127",
                    "\t\tmeta l4proto tcp meta skuid 0 ip6 daddr @istio-inpod-probes-v6 counter snat ip6 to fd16:9254:7127:1337:ffff:ffff:ffff:ffff",
                ],
                "{table}"
            );
            assert!(table.contains("type nat hook postrouting priority srcnat; policy accept;"));
        }
    }

    let r = rules.clone();
    node.within(move || {
        r.add_pod("uid-a", &[ip("10.1.0.1"), ip("fd00::1")])?;
        r.add_pod("uid-b", &[ip("10.1.0.2")])?;
        r.add_pod("uid-b", &[ip("10.1.0.2")])
    })
    .expect("add pods");
    assert_eq!(
        host_sets(&node, backend),
        entries(&[
            (v4, "10.1.0.1", "uid-a"),
            (v4, "10.1.0.2", "uid-b"),
            (v6, "fd00::1", "uid-a")
        ])
    );

    let r = rules.clone();
    node.within(move || r.remove_pod("uid-a"))
        .expect("remove pod");
    assert_eq!(
        host_sets(&node, backend),
        entries(&[(v4, "10.1.0.2", "uid-b")])
    );

    // An IP taken over by a new pod carries the new UID.
    let r = rules.clone();
    node.within(move || r.add_pod("uid-d", &[ip("10.1.0.2")]))
        .expect("take over");
    assert_eq!(
        host_sets(&node, backend),
        entries(&[(v4, "10.1.0.2", "uid-d")])
    );

    let r = rules.clone();
    node.within(move || {
        r.sync(&[
            ("uid-c".to_string(), vec![ip("10.1.0.3"), ip("fd00::3")]),
            ("uid-b".to_string(), vec![ip("10.1.0.2")]),
        ])
    })
    .expect("sync");
    assert_eq!(
        host_sets(&node, backend),
        entries(&[
            (v4, "10.1.0.2", "uid-b"),
            (v4, "10.1.0.3", "uid-c"),
            (v6, "fd00::3", "uid-c")
        ])
    );

    // Re-installing keeps the set contents.
    let r = rules.clone();
    node.within(move || r.install()).expect("reinstall");
    assert_eq!(host_sets(&node, backend).len(), 3);

    let r = rules.clone();
    node.within(move || r.uninstall().and_then(|()| r.uninstall()))
        .expect("uninstall twice");
    let save = node.exec(&["iptables-save", "-t", "nat"]);
    assert!(!save.contains("ISTIO"), "{save}");
    assert!(save.contains("-A POSTROUTING -o lo -j RETURN"), "{save}");
    assert!(!node.exec(&["ip6tables-save"]).contains("ISTIO"));
    assert!(!node.exec(&["ipset", "list", "-n"]).contains("istio"));
    assert!(!node.exec(&["nft", "list", "tables"]).contains("istio"));
}

#[test]
fn netns_host_probe_rules_iptables() {
    host_lifecycle(Backend::Iptables, "cnirules-hi");
}

#[test]
fn netns_host_probe_rules_nftables() {
    host_lifecycle(Backend::Nftables, "cnirules-hn");
}

#[test]
fn host_probe_rejects_odd_uids() {
    let rules = HostProbeRules::new(Backend::Iptables);
    for uid in ["", "a\"b", "x y", "a\nb"] {
        assert!(rules.add_pod(uid, &[]).is_err(), "{uid:?}");
        assert!(rules.remove_pod(uid).is_err(), "{uid:?}");
    }
}
