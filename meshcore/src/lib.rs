//! # meshcore
//!
//! Small pieces every mesh binary needs, with no knowledge of the mesh itself: configuration
//! sources (the process environment, or a map in tests), duration parsing, a drain signal for
//! graceful shutdown, telemetry setup (tracing with runtime-adjustable levels, Prometheus).
//!
//! A leaf crate: it depends on no other crate of the project.
//!
//! * [`env`]: [`env::EnvSource`], read by every binary's config; [`env::MapEnv`] for tests;
//! * [`duration`]: Go-style duration strings (`24h`, `1m30s`, `500ms`);
//! * [`drain`]: drain trigger/watch with a deadline, SIGTERM/SIGINT handling;
//! * [`telemetry`]: tracing subscriber with a reloadable filter, the Prometheus recorder.

pub mod drain;
pub mod duration;
pub mod env;
pub mod telemetry;
