//! Policy routing inside the pod netns, over rtnetlink:
//! `ip rule add fwmark 0x111/0xfff pref 32764 lookup 100` and
//! `ip route replace local 0.0.0.0/0 dev lo table 100` (and the IPv6 twins).
//!
//! Netlink sockets talk to the netns they were created in, so every operation runs on a fresh
//! OS thread that `setns`es into the pod netns, opens the connection there, drives it with a
//! current-thread tokio runtime and then exits (the thread is never reused).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures_util::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use nix::errno::Errno;
use nix::sched::CloneFlags;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use super::{CONNMARK_REPLY, MARK_MASK, ROUTE_TABLE, RULE_PRIORITY, RulesError};

/// Runs `f` on a new OS thread inside the netns at `netns`; the thread exits afterwards, so
/// its changed netns never leaks to other work.
pub(crate) fn in_netns<T, F>(netns: &Path, f: F) -> Result<T, RulesError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, RulesError> + Send + 'static,
{
    let path = netns.to_path_buf();
    let netns_err = move |reason: String| RulesError::Netns {
        path: path.clone(),
        reason,
    };
    let file = std::fs::File::open(netns).map_err(|e| netns_err(format!("open: {e}")))?;
    let err2 = netns_err.clone();
    std::thread::Builder::new()
        .name("cni-netns".into())
        .spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| err2(format!("setns: {e}")))?;
            f()
        })
        .map_err(|e| netns_err(format!("spawn thread: {e}")))?
        .join()
        .map_err(|_| netns_err("netns worker thread panicked".into()))?
}

fn netlink_err(what: &str, e: impl std::fmt::Display) -> RulesError {
    RulesError::Netlink(format!("{what}: {e}"))
}

/// Runs an async netlink job inside `netns`.
fn run<T, F, Fut>(netns: &Path, job: F) -> Result<T, RulesError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, RulesError>>,
{
    in_netns(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| netlink_err("tokio runtime", e))?;
        rt.block_on(async move {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| netlink_err("open socket", e))?;
            let conn = tokio::spawn(conn);
            let res = job(handle).await;
            conn.abort();
            res
        })
    })
}

/// The kernel errno of a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

fn rule_message(family: AddressFamily) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family;
    m.header.table = ROUTE_TABLE as u8;
    m.header.action = RuleAction::ToTable;
    m.attributes.push(RuleAttribute::Priority(RULE_PRIORITY));
    m.attributes.push(RuleAttribute::FwMark(CONNMARK_REPLY));
    m.attributes.push(RuleAttribute::FwMask(MARK_MASK));
    m
}

fn route_message(family: AddressFamily, lo: u32) -> RouteMessage {
    match family {
        AddressFamily::Inet6 => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .output_interface(lo)
            .table_id(ROUTE_TABLE)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .protocol(RouteProtocol::Boot)
            .build(),
        _ => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(lo)
            .table_id(ROUTE_TABLE)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .protocol(RouteProtocol::Boot)
            .build(),
    }
}

async fn lo_index(handle: &Handle) -> Result<u32, RulesError> {
    let mut links = handle.link().get().match_name(String::from("lo")).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(RulesError::Netlink("no `lo` interface".into())),
        Err(e) => Err(netlink_err("look up lo", e)),
    }
}

async fn add_family(handle: &Handle, family: AddressFamily, lo: u32) -> Result<(), RulesError> {
    let mut req = handle.rule().add();
    *req.message_mut() = rule_message(family);
    match req.execute().await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(Errno::EEXIST) => {}
        Err(e) => return Err(netlink_err(&format!("add {family:?} fwmark rule"), e)),
    }
    handle
        .route()
        .add(route_message(family, lo))
        .replace()
        .execute()
        .await
        .map_err(|e| netlink_err(&format!("replace {family:?} local route in table 100"), e))
}

/// Deletes our rule (every copy) and route for `family`, tolerating their absence.
async fn del_family(handle: &Handle, family: AddressFamily, lo: u32) -> Result<(), RulesError> {
    let gone = |e: &rtnetlink::Error| {
        matches!(
            errno(e),
            Some(Errno::ENOENT | Errno::ESRCH | Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL)
        )
    };
    for _ in 0..16 {
        match handle.rule().del(rule_message(family)).execute().await {
            Ok(()) => continue,
            Err(e) if gone(&e) => break,
            Err(e) => return Err(netlink_err(&format!("delete {family:?} fwmark rule"), e)),
        }
    }
    match handle
        .route()
        .del(route_message(family, lo))
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(netlink_err(&format!("delete {family:?} local route"), e)),
    }
}

/// IPv6 is usable on `lo` in the current netns (read on the netns thread: `/proc/sys/net`
/// shows the netns of the reading thread).
fn ipv6_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// Installs the rule and route (IPv6 too when `ipv6` and the netns has IPv6 on `lo`);
/// removes the IPv6 pair otherwise.
pub(crate) fn ensure(netns: &Path, ipv6: bool) -> Result<(), RulesError> {
    run(netns, move |handle| async move {
        let lo = lo_index(&handle).await?;
        add_family(&handle, AddressFamily::Inet, lo).await?;
        if ipv6 && ipv6_enabled() {
            add_family(&handle, AddressFamily::Inet6, lo).await
        } else {
            del_family(&handle, AddressFamily::Inet6, lo).await
        }
    })
}

/// Removes the rule and route of both families.
pub(crate) fn remove(netns: &Path) -> Result<(), RulesError> {
    run(netns, |handle| async move {
        let lo = lo_index(&handle).await?;
        del_family(&handle, AddressFamily::Inet, lo).await?;
        del_family(&handle, AddressFamily::Inet6, lo).await
    })
}

/// Whether our IPv4 fwmark rule exists.
pub(crate) fn present(netns: &Path) -> Result<bool, RulesError> {
    run(netns, |handle| async move {
        let mut rules = handle.rule().get(IpVersion::V4).execute();
        while let Some(rule) = rules
            .try_next()
            .await
            .map_err(|e| netlink_err("list rules", e))?
        {
            let has = |want: &RuleAttribute| rule.attributes.iter().any(|a| a == want);
            if has(&RuleAttribute::FwMark(CONNMARK_REPLY))
                && has(&RuleAttribute::Priority(RULE_PRIORITY))
            {
                return Ok(true);
            }
        }
        Ok(false)
    })
}
