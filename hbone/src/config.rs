//! Tunables for HBONE servers and clients. Defaults are the values Istio's ztunnel uses
//! (see the HBONE reference: windows, frame size, stream limits, keepalive, pool timeouts).

use std::time::Duration;

use crate::tls::TlsSettings;

/// HTTP/2 flow control and keepalive, common to both sides.
#[derive(Debug, Clone)]
pub struct H2Settings {
    /// SETTINGS_INITIAL_WINDOW_SIZE (per stream). `HTTP2_STREAM_WINDOW_SIZE`.
    pub stream_window: u32,
    /// Connection-level window. `HTTP2_CONNECTION_WINDOW_SIZE`.
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE. `HTTP2_FRAME_SIZE`.
    pub frame_size: u32,
    /// Interval between keepalive PINGs (the first one after this long).
    pub keepalive_interval: Duration,
    /// A PING not answered within this long drops the connection.
    pub keepalive_timeout: Duration,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            frame_size: 1024 * 1024,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// An HBONE server (the inbound side, port 15008).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub h2: H2Settings,
    pub tls: TlsSettings,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients.
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_size: u32,
    /// Bytes a stream may buffer for sending before it stops asking for capacity.
    pub max_send_buffer: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            h2: H2Settings::default(),
            tls: TlsSettings::default(),
            max_concurrent_streams: 200,
            max_header_list_size: 65536,
            max_send_buffer: 409_600,
        }
    }
}

/// An HBONE client connection pool (the outbound side).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub h2: H2Settings,
    pub tls: TlsSettings,
    /// Streams per connection before another connection is opened for the same key
    /// (also capped by the server's SETTINGS_MAX_CONCURRENT_STREAMS).
    /// `POOL_MAX_STREAMS_PER_CONNECTION`.
    pub max_streams_per_connection: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_size: u32,
    /// A connection unused for this long is closed. `POOL_UNUSED_RELEASE_TIMEOUT`.
    pub idle_timeout: Duration,
    /// TCP connect timeout towards port 15008.
    pub connect_timeout: Duration,
    /// Bytes a stream may queue in HTTP/2 beyond what was written to the socket. Kept well
    /// below the 4 MiB stream window: a deep queue is written and encrypted long after it was
    /// filled, from cold cache (measured: 0.70× plain TLS with 4 MiB, 0.81× with 400 KiB).
    pub max_send_buffer: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            h2: H2Settings::default(),
            tls: TlsSettings::default(),
            max_streams_per_connection: 100,
            max_header_list_size: 16384,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            max_send_buffer: 409_600,
        }
    }
}
