//! Finding a running pod's network namespace from its IP.
//!
//! A pod that was not enrolled when it started (its namespace is labelled later) never went
//! through our plugin's ADD, so the agent does not know its netns. Like Istio's agent, we look
//! for it: every named netns in the netns directory (container runtimes bind-mount pod
//! namespaces there, e.g. `/var/run/netns/cni-<uuid>`) and then every process's
//! `/proc/<pid>/ns/net`, each namespace once (by device and inode), skipping our own. A
//! dedicated OS thread enters each candidate and lists its interface addresses; the first
//! namespace holding one of the pod's IPs wins. The thread ends afterwards, so no other thread
//! ever runs in a pod's namespace.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

/// Candidate namespace files: `netns_dir/*`, then `proc_dir/<pid>/ns/net`, deduplicated by
/// `(dev, inode)`, without the caller's own namespace. Paths are as seen by this process.
pub fn candidates(netns_dir: &Path, proc_dir: &Path) -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    if let Ok(m) = std::fs::metadata(proc_dir.join("self/ns/net")) {
        seen.insert((m.dev(), m.ino()));
    }
    if let Ok(m) = std::fs::metadata("/proc/self/ns/net") {
        seen.insert((m.dev(), m.ino()));
    }
    let mut out = Vec::new();
    let mut push = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p)
            && seen.insert((m.dev(), m.ino()))
        {
            out.push(p);
        }
    };
    if let Ok(rd) = std::fs::read_dir(netns_dir) {
        let mut named: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        named.sort();
        named.into_iter().for_each(&mut push);
    }
    if let Ok(rd) = std::fs::read_dir(proc_dir) {
        let mut pids: Vec<u32> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        pids.sort_unstable();
        for pid in pids {
            push(proc_dir.join(pid.to_string()).join("ns/net"));
        }
    }
    out
}

/// The first candidate namespace that has one of `ips` on an interface. Blocking: run it off
/// the async runtime.
pub fn find_by_ip(ips: &[IpAddr], candidates: Vec<PathBuf>) -> Option<PathBuf> {
    if ips.is_empty() {
        return None;
    }
    let ips = ips.to_vec();
    std::thread::Builder::new()
        .name("netns-scan".into())
        .spawn(move || {
            candidates
                .into_iter()
                .find(|path| has_any_ip(path, &ips).unwrap_or(false))
        })
        .ok()?
        .join()
        .ok()
        .flatten()
}

/// Enters `path` (on the calling thread, which must be disposable) and checks its addresses.
fn has_any_ip(path: &Path, ips: &[IpAddr]) -> nix::Result<bool> {
    let file = File::open(path)
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::ENOENT)))?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)?;
    let found = nix::ifaddrs::getifaddrs()?.any(|ifa| {
        ifa.address.as_ref().is_some_and(|a| {
            let ip = a
                .as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())));
            ip.is_some_and(|ip| ips.contains(&ip))
        })
    });
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_never_a_candidate_and_duplicates_collapse() {
        let dir = std::env::temp_dir().join(format!("netns-scan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Two names for our own namespace: both dropped.
        std::fs::write(dir.join("x"), b"").unwrap();
        let c = candidates(&dir, Path::new("/proc"));
        let own = std::fs::metadata("/proc/self/ns/net").unwrap();
        assert!(c.iter().all(|p| {
            let m = std::fs::metadata(p).unwrap();
            (m.dev(), m.ino()) != (own.dev(), own.ino())
        }));
        assert!(c.contains(&dir.join("x")), "a plain file is its own inode");
        let mut keys: Vec<_> = c
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).unwrap();
                (m.dev(), m.ino())
            })
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_ips_finds_nothing() {
        assert_eq!(
            find_by_ip(&[], vec![PathBuf::from("/proc/self/ns/net")]),
            None
        );
    }
}
