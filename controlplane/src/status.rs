//! What the control plane knows about its clients, like `istioctl proxy-status`.
//!
//! The xDS server records, per connected proxy and per type, the last nonce sent, the last
//! nonce ACKed and the last NACK. From those each type is in one state:
//!
//! | State | Meaning |
//! |---|---|
//! | `SYNCED` | the latest response sent was ACKed |
//! | `STALE` | a response was sent and is not yet ACKed (or an older one was NACKed) |
//! | `NACKED` | the client rejected the latest response; the message says why |
//! | `NOT SENT` | subscribed, nothing sent yet |
//! | `IGNORED` | the proxy did not subscribe to this type |
//!
//! [`StatusRegistry`] is shared by all streams; every change bumps a watch channel so that
//! `serve` can rewrite `<state-dir>/status.json`, which `controlplane status` renders with
//! [`render_table`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Sync state of one type on one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncState {
    Synced,
    Stale,
    Nacked,
    NotSent,
    Ignored,
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncState::Synced => "SYNCED",
            SyncState::Stale => "STALE",
            SyncState::Nacked => "NACKED",
            SyncState::NotSent => "NOT SENT",
            SyncState::Ignored => "IGNORED",
        })
    }
}

/// Per type, per proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeStatus {
    /// Nonce of the latest response sent (empty: none yet).
    pub nonce_sent: String,
    /// Nonce of the latest ACK received.
    pub nonce_acked: String,
    /// Nonce the latest NACK referred to, and its message.
    pub nacked_nonce: String,
    pub nack_message: Option<String>,
    /// Resources the proxy holds (as far as the server knows).
    pub resources: usize,
    /// Responses sent on this stream for this type.
    pub responses: u64,
}

impl TypeStatus {
    /// The state these nonces amount to.
    pub fn state(&self) -> SyncState {
        if self.nonce_sent.is_empty() {
            SyncState::NotSent
        } else if self.nack_message.is_some() && self.nacked_nonce == self.nonce_sent {
            SyncState::Nacked
        } else if self.nonce_acked == self.nonce_sent {
            SyncState::Synced
        } else {
            SyncState::Stale
        }
    }
}

/// Serialized form of a type's status (the state is spelled out for readers of the JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeReport {
    pub state: SyncState,
    #[serde(flatten)]
    pub detail: TypeStatus,
}

/// One connected proxy (one stream; a proxy reconnecting briefly shows twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// Server-side stream number, unique for the life of the process.
    pub connection: u64,
    pub node_id: String,
    /// `ns/sa` from the proxy's token.
    pub caller: String,
    pub peer: Option<String>,
    /// RFC 3339, UTC.
    pub connected_since: String,
    pub connected_since_unix: u64,
    /// By type URL; only subscribed types appear.
    pub types: BTreeMap<String, TypeReport>,
}

impl ProxyStatus {
    /// The state of `type_url` (`IGNORED` when not subscribed).
    pub fn state(&self, type_url: &str) -> SyncState {
        self.types
            .get(type_url)
            .map_or(SyncState::Ignored, |t| t.state)
    }
}

/// Everything `status.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// False once `serve` has shut down.
    pub serving: bool,
    /// The address the gRPC server listens on.
    pub listen: Option<String>,
    /// RFC 3339 time of this report.
    pub updated: String,
    /// Resources in the current snapshot, by type URL.
    pub snapshot_resources: BTreeMap<String, usize>,
    /// Problems found in the config directory by the last translation (file, object, reason).
    pub config_errors: Vec<String>,
    /// Connected proxies, oldest connection first.
    pub proxies: Vec<ProxyStatus>,
}

#[derive(Debug, Default)]
struct Inner {
    next_connection: u64,
    report: StatusReport,
    proxies: BTreeMap<u64, ProxyStatus>,
}

/// Shared, cheap to clone registry of proxy status.
#[derive(Debug, Clone)]
pub struct StatusRegistry {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for StatusRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusRegistry {
    pub fn new() -> Self {
        StatusRegistry {
            inner: Arc::new(Mutex::new(Inner::default())),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    /// A receiver that sees a new value on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Registers a stream; the proxy disappears from the report when the guard drops.
    pub fn connect(&self, node_id: &str, caller: &str, peer: Option<String>) -> ConnectionGuard {
        let now = SystemTime::now();
        let connection = {
            let mut inner = self.inner.lock();
            inner.next_connection += 1;
            let connection = inner.next_connection;
            inner.proxies.insert(
                connection,
                ProxyStatus {
                    connection,
                    node_id: node_id.to_string(),
                    caller: caller.to_string(),
                    peer,
                    connected_since: rfc3339(now),
                    connected_since_unix: unix_seconds(now),
                    types: BTreeMap::new(),
                },
            );
            connection
        };
        self.bump();
        ConnectionGuard {
            registry: self.clone(),
            connection,
        }
    }

    /// Records the status of one type of one stream.
    pub fn update(&self, connection: u64, type_url: &str, status: &TypeStatus) {
        {
            let mut inner = self.inner.lock();
            let Some(proxy) = inner.proxies.get_mut(&connection) else {
                return;
            };
            let report = TypeReport {
                state: status.state(),
                detail: status.clone(),
            };
            if proxy.types.get(type_url) == Some(&report) {
                return;
            }
            proxy.types.insert(type_url.to_string(), report);
        }
        self.bump();
    }

    /// Sets the listen address shown in the report.
    pub fn set_listen(&self, listen: String) {
        self.inner.lock().report.listen = Some(listen);
        self.bump();
    }

    /// Marks the server as serving or stopped.
    pub fn set_serving(&self, serving: bool) {
        self.inner.lock().report.serving = serving;
        self.bump();
    }

    /// Records the current snapshot's size and the config problems behind it.
    pub fn set_snapshot(&self, resources: BTreeMap<String, usize>, config_errors: Vec<String>) {
        {
            let mut inner = self.inner.lock();
            inner.report.snapshot_resources = resources;
            inner.report.config_errors = config_errors;
        }
        self.bump();
    }

    /// The current report.
    pub fn report(&self) -> StatusReport {
        let inner = self.inner.lock();
        let mut report = inner.report.clone();
        report.updated = rfc3339(SystemTime::now());
        report.proxies = inner.proxies.values().cloned().collect();
        report
    }

    /// The status of the proxies whose node id is `node_id`.
    pub fn proxies_named(&self, node_id: &str) -> Vec<ProxyStatus> {
        let inner = self.inner.lock();
        inner
            .proxies
            .values()
            .filter(|p| p.node_id == node_id)
            .cloned()
            .collect()
    }
}

/// Keeps a proxy in the registry while alive.
#[derive(Debug)]
pub struct ConnectionGuard {
    registry: StatusRegistry,
    connection: u64,
}

impl ConnectionGuard {
    /// The stream number.
    pub fn id(&self) -> u64 {
        self.connection
    }

    /// Records the status of one type of this stream.
    pub fn update(&self, type_url: &str, status: &TypeStatus) {
        self.registry.update(self.connection, type_url, status);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.registry.inner.lock().proxies.remove(&self.connection);
        self.registry.bump();
    }
}

/// Renders a report as a table, like `istioctl proxy-status`, followed by NACK messages and
/// config errors.
pub fn render_table(report: &StatusReport) -> String {
    let header = [
        "NAME",
        "CALLER",
        "PEER",
        "CONNECTED SINCE",
        "ADDRESS",
        "AUTHORIZATION",
    ];
    let rows: Vec<[String; 6]> = report
        .proxies
        .iter()
        .map(|p| {
            [
                p.node_id.clone(),
                p.caller.clone(),
                p.peer.clone().unwrap_or_else(|| "-".into()),
                p.connected_since.clone(),
                p.state(proto::ADDRESS_TYPE_URL).to_string(),
                p.state(proto::AUTHORIZATION_TYPE_URL).to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}   "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in &rows {
        line(row);
    }
    if report.proxies.is_empty() {
        out.push_str("(no proxies connected)\n");
    }
    for p in &report.proxies {
        for (type_url, t) in &p.types {
            if let (SyncState::Nacked, Some(msg)) = (t.state, &t.detail.nack_message) {
                let short = type_url.rsplit('.').next().unwrap_or(type_url);
                out.push_str(&format!("NACK {} {short}: {msg}\n", p.node_id));
            }
        }
    }
    for e in &report.config_errors {
        out.push_str(&format!("config error: {e}\n"));
    }
    if !report.serving {
        out.push_str("(the control plane is not serving)\n");
    }
    out
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time (UTC, whole seconds).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29T12:34:56Z
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn states_follow_nonces() {
        let mut t = TypeStatus::default();
        assert_eq!(t.state(), SyncState::NotSent);
        t.nonce_sent = "a".into();
        assert_eq!(t.state(), SyncState::Stale);
        t.nonce_acked = "a".into();
        assert_eq!(t.state(), SyncState::Synced);
        t.nonce_sent = "b".into();
        t.nacked_nonce = "b".into();
        t.nack_message = Some("x: bad".into());
        assert_eq!(t.state(), SyncState::Nacked);
        t.nonce_sent = "c".into();
        assert_eq!(t.state(), SyncState::Stale);
    }

    #[test]
    fn registry_tracks_connections_and_renders() {
        let reg = StatusRegistry::new();
        let mut changes = reg.subscribe();
        let guard = reg.connect(
            "ztunnel~1.1.1.1~z.istio-system~x",
            "istio-system/ztunnel",
            None,
        );
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let status = TypeStatus {
            nonce_sent: "n1".into(),
            nacked_nonce: "n1".into(),
            nack_message: Some("a: broken".into()),
            ..Default::default()
        };
        guard.update(proto::ADDRESS_TYPE_URL, &status);
        assert!(changes.has_changed().unwrap());
        let report = reg.report();
        assert_eq!(report.proxies.len(), 1);
        let table = render_table(&report);
        assert!(table.contains("NACKED"), "{table}");
        assert!(table.contains("IGNORED"), "{table}");
        assert!(table.contains("a: broken"), "{table}");
        let json = serde_json::to_string(&report).unwrap();
        let back: StatusReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        drop(guard);
        assert!(reg.report().proxies.is_empty());
    }
}
