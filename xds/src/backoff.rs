//! How a stream ended, and how long to wait before the next one. Pure
//! decisions, table-tested; the client loop only performs them.
//!
//! | Termination | Reason label | Next delay |
//! |---|---|---|
//! | connect/transport error (before the stream is up) | `ConnectionError` | `min(15 s, previous × 2)` starting at 10 ms |
//! | gRPC `Unknown`, `Cancelled`, `DeadlineExceeded`, or `Unavailable` mentioning "transport is closing" / "received prior goaway" | `Reconnect` | 10 ms, sequence reset |
//! | any other gRPC status, or a stalled stream | `Error` | `min(15 s, previous × 2)` |
//! | other client-side error | `Error` | immediate, sequence reset |
//! | clean stream end | `Complete` | immediate, sequence reset |
//!
//! A stream that received at least one response was healthy: the doubling
//! sequence restarts at 10 ms after it, whatever ended it.

use std::time::Duration;

use serde::Serialize;

/// First delay of the doubling sequence.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
/// Cap of the doubling sequence.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// The `reason` label of `istio_xds_connection_terminations_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TerminationReason {
    /// Could not connect or open the stream.
    ConnectionError,
    /// The stream failed.
    Error,
    /// The server rotated the connection (normal for istiod).
    Reconnect,
    /// The stream ended cleanly.
    Complete,
}

impl TerminationReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::ConnectionError => "ConnectionError",
            TerminationReason::Error => "Error",
            TerminationReason::Reconnect => "Reconnect",
            TerminationReason::Complete => "Complete",
        }
    }
}

/// How a stream attempt ended.
#[derive(Debug)]
pub(crate) enum Termination {
    /// Connect or stream-open failed at the transport level.
    Connect(String),
    /// The server (or the transport, via tonic) ended the stream with a status.
    Status(tonic::Status),
    /// Every wildcard subscription was not answered in time.
    Stalled,
    /// A local failure (for example the token file could not be read).
    Local(String),
    /// The response stream ended without error.
    Complete,
}

/// What to do after a termination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub reason: TerminationReason,
    pub delay: Duration,
}

/// The doubling sequence's memory.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    /// Decides the delay after `t`; `healthy` is whether the stream received
    /// at least one response.
    pub(crate) fn next(&mut self, t: &Termination, healthy: bool) -> Decision {
        if healthy {
            self.last = None;
        }
        let (reason, delay) = match t {
            Termination::Connect(_) => (TerminationReason::ConnectionError, self.double()),
            Termination::Status(s) if is_rotation(s) => {
                self.last = None;
                (TerminationReason::Reconnect, INITIAL_BACKOFF)
            }
            Termination::Status(_) | Termination::Stalled => {
                (TerminationReason::Error, self.double())
            }
            Termination::Local(_) => {
                self.last = None;
                (TerminationReason::Error, Duration::ZERO)
            }
            Termination::Complete => {
                self.last = None;
                (TerminationReason::Complete, Duration::ZERO)
            }
        };
        Decision { reason, delay }
    }

    fn double(&mut self) -> Duration {
        let d = self
            .last
            .map_or(INITIAL_BACKOFF, |p| (p * 2).min(MAX_BACKOFF));
        self.last = Some(d);
        d
    }
}

/// Statuses that mean "the server closed the connection on purpose"
/// (istiod's max connection age) rather than a failure.
fn is_rotation(s: &tonic::Status) -> bool {
    use tonic::Code;
    match s.code() {
        Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Unavailable => {
            let m = s.message();
            m.contains("transport is closing") || m.contains("received prior goaway")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn classification_table() {
        use TerminationReason::*;
        let table: Vec<(Termination, TerminationReason, Duration)> = vec![
            (
                Termination::Connect("refused".into()),
                ConnectionError,
                ms(10),
            ),
            (
                Termination::Status(Status::new(Code::Unknown, "x")),
                Reconnect,
                ms(10),
            ),
            (
                Termination::Status(Status::new(Code::Cancelled, "x")),
                Reconnect,
                ms(10),
            ),
            (
                Termination::Status(Status::new(Code::DeadlineExceeded, "x")),
                Reconnect,
                ms(10),
            ),
            (
                Termination::Status(Status::new(Code::Unavailable, "transport is closing")),
                Reconnect,
                ms(10),
            ),
            (
                Termination::Status(Status::new(Code::Unavailable, "received prior goaway: x")),
                Reconnect,
                ms(10),
            ),
            (
                Termination::Status(Status::new(Code::Unavailable, "other")),
                Error,
                ms(10),
            ),
            (
                Termination::Status(Status::new(Code::PermissionDenied, "x")),
                Error,
                ms(10),
            ),
            (Termination::Stalled, Error, ms(10)),
            (Termination::Local("token".into()), Error, Duration::ZERO),
            (Termination::Complete, Complete, Duration::ZERO),
        ];
        for (t, reason, delay) in table {
            let d = Backoff::default().next(&t, false);
            assert_eq!(d, Decision { reason, delay }, "{t:?}");
        }
    }

    #[test]
    fn doubles_to_cap_and_resets() {
        let mut b = Backoff::default();
        let fail = Termination::Connect("refused".into());
        let mut got = Vec::new();
        for _ in 0..13 {
            got.push(b.next(&fail, false).delay);
        }
        let want: Vec<Duration> = [
            10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 15000, 15000,
        ]
        .into_iter()
        .map(ms)
        .collect();
        assert_eq!(got, want);
        // A healthy stream restarts the sequence even if it then failed.
        let perm = Termination::Status(Status::new(Code::PermissionDenied, "x"));
        assert_eq!(b.next(&perm, true).delay, ms(10));
        assert_eq!(b.next(&perm, false).delay, ms(20));
        // Rotation and clean end reset.
        b.next(&Termination::Status(Status::new(Code::Unknown, "")), false);
        assert_eq!(b.next(&fail, false).delay, ms(10));
        assert_eq!(b.next(&fail, false).delay, ms(20));
        assert_eq!(b.next(&Termination::Complete, false).delay, Duration::ZERO);
        assert_eq!(b.next(&fail, false).delay, ms(10));
    }
}
