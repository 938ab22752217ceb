//! The client side: the three measurements, for each transport. Runs on the main thread's
//! single-threaded runtime; every measurement opens its own fresh connection, and reads both
//! threads' CPU clocks around the timed part.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hbone::{ClientSettings, ConnectRequest, DefaultDialer, Pool, StaticCertificate, Tunnel};
use http::HeaderMap;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;

use crate::Transport;
use crate::cpu::{Clocks, CpuUse};
use crate::server::{Addrs, CLIENT_ID, Certs, Mode, SERVER_ID, identity};
use crate::streams::{COPY_BUF, Source, pattern};

/// Connections opened before the connection-rate clock starts.
const CONNECT_WARMUP: usize = 20;

pub struct Client {
    addrs: Addrs,
    tls: tokio_rustls::TlsConnector,
    cert: Arc<StaticCertificate>,
    settings: ClientSettings,
    pattern: Arc<[u8]>,
    /// Server-side setups completed (see `server::start`).
    handshakes: Arc<Semaphore>,
    clocks: Clocks,
}

/// What one throughput run measured.
pub struct ThroughputRun {
    pub elapsed: Duration,
    pub cpu: CpuUse,
}

/// What one latency run measured.
pub struct LatencyRun {
    /// One round-trip time per recorded ping.
    pub samples: Vec<Duration>,
    pub elapsed: Duration,
    pub cpu: CpuUse,
}

/// What one connection-rate run measured.
pub struct ConnectRun {
    pub rate: f64,
    /// Setup time of each timed connection.
    pub setups: Vec<Duration>,
    pub elapsed: Duration,
    pub cpu: CpuUse,
}

impl Client {
    pub fn new(
        certs: &Certs,
        addrs: Addrs,
        handshakes: Arc<Semaphore>,
        clocks: Clocks,
        settings: ClientSettings,
    ) -> anyhow::Result<Self> {
        Ok(Client {
            addrs,
            tls: tokio_rustls::TlsConnector::from(crate::tls::client_config(&certs.client)?),
            cert: StaticCertificate::new(certs.client.workload_cert()),
            settings,
            pattern: pattern(),
            handshakes,
            clocks,
        })
    }

    async fn tcp(&self, mode: Mode) -> anyhow::Result<TcpStream> {
        let tcp = TcpStream::connect(self.addrs.tcp.get(mode)).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    async fn tls(&self, mode: Mode) -> anyhow::Result<TlsStream<TcpStream>> {
        let addr = self.addrs.tls.get(mode);
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(addr.ip().into());
        self.tls.connect(name, tcp).await.context("TLS handshake")
    }

    /// A new pool (so nothing is reused) and one tunnel through it. Keep the pool alive for
    /// as long as the tunnel: dropping it closes the connection once the tunnel is gone.
    async fn tunnel(&self, mode: Mode) -> anyhow::Result<(Pool, Tunnel)> {
        let pool = Pool::new(
            self.settings.clone(),
            self.cert.clone(),
            Arc::new(DefaultDialer),
        );
        let request = ConnectRequest {
            source: identity(CLIENT_ID),
            expected: vec![identity(SERVER_ID)],
            destination: self.addrs.hbone,
            source_ip: None,
            authority: mode.authority().to_string(),
            headers: HeaderMap::new(),
        };
        let tunnel = pool.connect(request).await.context("HBONE connect")?;
        Ok((pool, tunnel))
    }

    /// Waits until the server has completed its side of one more setup.
    async fn server_done(&self) -> anyhow::Result<()> {
        let permit = tokio::time::timeout(Duration::from_secs(10), self.handshakes.acquire())
            .await
            .context("the server did not complete its side of the setup within 10 s")??;
        permit.forget();
        Ok(())
    }

    /// The negotiated parameters of the plain TLS connection, for the report header.
    pub async fn describe_tls(&self) -> anyhow::Result<String> {
        let mut tls = self.tls(Mode::Accept).await?;
        let (_, session) = tls.get_ref();
        let suite = session
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        let group = session
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_default();
        let version = session
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        tls.shutdown().await?;
        self.server_done().await?;
        Ok(format!("{version}, {suite}, {group}"))
    }

    /// (A) Pushes `bytes` through one fresh connection to a discarding server; times from
    /// the first byte until the server's acknowledgement of the total.
    pub async fn throughput(&self, t: Transport, bytes: u64) -> anyhow::Result<ThroughputRun> {
        let source = Source::new(self.pattern.clone(), bytes);
        let clocks = &self.clocks;
        match t {
            Transport::Tcp => push(self.tcp(Mode::Sink).await?, source, bytes, clocks).await,
            Transport::Tls => push(self.tls(Mode::Sink).await?, source, bytes, clocks).await,
            Transport::Hbone => {
                let (_pool, tunnel) = self.tunnel(Mode::Sink).await?;
                let mut ack = Vec::with_capacity(8);
                let cpu = clocks.read();
                let start = Instant::now();
                let moved = hbone::copy_bidirectional(source, &mut ack, tunnel.stream).await?;
                let elapsed = start.elapsed();
                let cpu = clocks.read().since(cpu);
                ensure!(
                    moved.to_tunnel == bytes,
                    "sent {} of {bytes}",
                    moved.to_tunnel
                );
                check_ack(&ack, bytes)?;
                Ok(ThroughputRun { elapsed, cpu })
            }
        }
    }

    /// (B) `pings` sequential round trips of `size` bytes on one connection, after `warmup`
    /// unrecorded ones.
    pub async fn latency(
        &self,
        t: Transport,
        pings: usize,
        warmup: usize,
        size: usize,
    ) -> anyhow::Result<LatencyRun> {
        let plan = PingPlan {
            pings,
            warmup,
            size,
            clocks: &self.clocks,
        };
        match t {
            Transport::Tcp => plan.run(self.tcp(Mode::Echo).await?).await,
            Transport::Tls => plan.run(self.tls(Mode::Echo).await?).await,
            Transport::Hbone => {
                let (_pool, tunnel) = self.tunnel(Mode::Echo).await?;
                plan.run(tunnel.stream).await
            }
        }
    }

    /// (C) Opens and closes fresh connections one after the other for `duration`.
    pub async fn connect_rate(
        &self,
        t: Transport,
        duration: Duration,
    ) -> anyhow::Result<ConnectRun> {
        for _ in 0..CONNECT_WARMUP {
            self.connect_once(t).await?;
        }
        let mut setups = Vec::new();
        let cpu = self.clocks.read();
        let start = Instant::now();
        while start.elapsed() < duration {
            setups.push(self.connect_once(t).await?);
        }
        let elapsed = start.elapsed();
        let cpu = self.clocks.read().since(cpu);
        Ok(ConnectRun {
            rate: setups.len() as f64 / elapsed.as_secs_f64(),
            setups,
            elapsed,
            cpu,
        })
    }

    /// One full setup (TCP connect; + TLS handshake; + HTTP/2 handshake and CONNECT → 200),
    /// counted once both ends are done with it, then the close. Returns the setup time.
    async fn connect_once(&self, t: Transport) -> anyhow::Result<Duration> {
        let start = Instant::now();
        match t {
            Transport::Tcp => {
                let tcp = self.tcp(Mode::Accept).await?;
                self.server_done().await?;
                let setup = start.elapsed();
                drop(tcp);
                Ok(setup)
            }
            Transport::Tls => {
                let mut tls = self.tls(Mode::Accept).await?;
                self.server_done().await?;
                let setup = start.elapsed();
                tls.shutdown().await?;
                Ok(setup)
            }
            Transport::Hbone => {
                let (pool, tunnel) = self.tunnel(Mode::Accept).await?;
                self.server_done().await?;
                let setup = start.elapsed();
                // Dropping the last handles closes the stream, then the connection
                // (GOAWAY, close_notify, FIN) in the pool's driver task.
                drop(tunnel);
                drop(pool);
                Ok(setup)
            }
        }
    }
}

/// The plain TCP / TLS upload: the same cheap source and buffer size as the HBONE copy.
async fn push<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    mut source: Source,
    bytes: u64,
    clocks: &Clocks,
) -> anyhow::Result<ThroughputRun> {
    let mut buf = vec![0u8; COPY_BUF];
    let cpu = clocks.read();
    let start = Instant::now();
    loop {
        let n = source.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n]).await?;
    }
    s.shutdown().await?;
    let mut ack = Vec::with_capacity(8);
    s.read_to_end(&mut ack).await?;
    let elapsed = start.elapsed();
    let cpu = clocks.read().since(cpu);
    check_ack(&ack, bytes)?;
    Ok(ThroughputRun { elapsed, cpu })
}

fn check_ack(ack: &[u8], bytes: u64) -> anyhow::Result<()> {
    let Ok(raw) = <[u8; 8]>::try_from(ack) else {
        bail!("server acknowledgement is {} bytes, expected 8", ack.len());
    };
    let got = u64::from_be_bytes(raw);
    ensure!(got == bytes, "server received {got} bytes, sent {bytes}");
    Ok(())
}

struct PingPlan<'a> {
    pings: usize,
    warmup: usize,
    size: usize,
    clocks: &'a Clocks,
}

impl PingPlan<'_> {
    /// Sequential echo round trips: write `size` bytes, read them back.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&self, mut s: S) -> anyhow::Result<LatencyRun> {
        let message: Vec<u8> = (0..self.size).map(|i| (i % 251) as u8).collect();
        let mut back = vec![0u8; self.size];
        let mut samples = Vec::with_capacity(self.pings);
        let mut cpu = self.clocks.read();
        let mut start = Instant::now();
        for i in 0..self.warmup + self.pings {
            if i == self.warmup {
                cpu = self.clocks.read();
                start = Instant::now();
            }
            let sent = Instant::now();
            s.write_all(&message).await?;
            s.flush().await?;
            s.read_exact(&mut back).await?;
            let elapsed = sent.elapsed();
            if i >= self.warmup {
                samples.push(elapsed);
            }
        }
        let elapsed = start.elapsed();
        let cpu = self.clocks.read().since(cpu);
        ensure!(back == message, "echo returned different bytes");
        s.shutdown().await?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await?;
        ensure!(rest.is_empty(), "echo sent {} unexpected bytes", rest.len());
        Ok(LatencyRun {
            samples,
            elapsed,
            cpu,
        })
    }
}
