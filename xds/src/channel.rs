//! The gRPC channel to the control plane and the per-stream credentials.
//!
//! Everything here is re-evaluated on every connection attempt: the root
//! certificate file and the token file are read again, so rotated files are
//! picked up by the next reconnect without restarting the proxy.

use std::path::PathBuf;

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::{RootCert, TokenSource, XdsConfig};

/// Why a channel or the credentials for a stream could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The configured address is not a usable URI.
    #[error("xDS address {address:?} is invalid: {source}; expected https://host:port")]
    InvalidAddress {
        /// The configured address.
        address: String,
        /// What tonic rejected.
        #[source]
        source: tonic::transport::Error,
    },
    /// Neither `http://` nor `https://`.
    #[error("xDS address {0:?} must start with https:// (or http:// for a plaintext test server)")]
    UnsupportedScheme(String),
    /// `https://` without roots.
    #[error(
        "xDS address {0:?} uses TLS but no root certificate is configured (XDS_ROOT_CA / root-cert.pem)"
    )]
    MissingRootCert(String),
    /// The root certificate file could not be read.
    #[error("cannot read the xDS root certificate {path}: {source}")]
    RootCertRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The root certificate text holds no PEM certificate.
    #[error("the xDS root certificate ({origin}) contains no PEM certificate")]
    RootCertEmpty {
        /// File path or "inline".
        origin: String,
    },
    /// The TLS settings were rejected.
    #[error("invalid TLS settings for the xDS channel: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// TCP connect or TLS handshake failed.
    #[error("cannot connect to the xDS server at {address}: {source}")]
    Connect {
        /// The configured address.
        address: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The token file could not be read.
    #[error("cannot read the xDS token file {path}: {source}")]
    TokenRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A header name or value cannot be sent as gRPC metadata.
    #[error(
        "header {name:?} cannot be sent as gRPC metadata (names: lowercase ASCII; values: visible ASCII)"
    )]
    InvalidHeader {
        /// The header name.
        name: String,
    },
}

/// Builds the endpoint described by `config` (reading the root file now).
pub fn endpoint(config: &XdsConfig) -> Result<Endpoint, ChannelError> {
    let address = config.address.clone();
    let tls = if address.starts_with("https://") {
        true
    } else if address.starts_with("http://") {
        false
    } else {
        return Err(ChannelError::UnsupportedScheme(address));
    };
    let t = &config.timeouts;
    let mut ep = Endpoint::from_shared(address.clone())
        .map_err(|source| ChannelError::InvalidAddress {
            address: address.clone(),
            source,
        })?
        .connect_timeout(t.connect)
        .http2_keep_alive_interval(t.keepalive_interval)
        .keep_alive_timeout(t.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(t.tcp_keepalive))
        .tcp_keepalive_interval(Some(t.tcp_keepalive_interval))
        .tcp_keepalive_retries(Some(t.tcp_keepalive_retries))
        .tcp_nodelay(true);
    if tls {
        let root = config
            .root_cert
            .as_ref()
            .ok_or_else(|| ChannelError::MissingRootCert(address.clone()))?;
        let pem = root_pem(root)?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem))
            .assume_http2(true);
        if let Some(name) = &config.server_name {
            tls = tls.domain_name(name.clone());
        }
        ep = ep.tls_config(tls).map_err(ChannelError::Tls)?;
    }
    Ok(ep)
}

/// Connects a new channel for one stream attempt.
pub async fn connect(config: &XdsConfig) -> Result<Channel, ChannelError> {
    let ep = endpoint(config)?;
    ep.connect().await.map_err(|source| ChannelError::Connect {
        address: config.address.clone(),
        source,
    })
}

fn root_pem(root: &RootCert) -> Result<String, ChannelError> {
    let (pem, origin) = match root {
        RootCert::File(path) => (
            std::fs::read_to_string(path).map_err(|source| ChannelError::RootCertRead {
                path: path.clone(),
                source,
            })?,
            path.display().to_string(),
        ),
        RootCert::Pem(pem) => (pem.clone(), "inline".to_string()),
    };
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(ChannelError::RootCertEmpty { origin });
    }
    Ok(pem)
}

/// The gRPC metadata for one stream: `authorization: Bearer <token>` (token
/// file read now), `clusterid`, and the extra headers.
pub fn stream_metadata(config: &XdsConfig) -> Result<MetadataMap, ChannelError> {
    let mut md = MetadataMap::new();
    let token = match &config.token {
        TokenSource::None => None,
        TokenSource::Literal(t) => Some(t.trim().to_string()),
        TokenSource::File(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| ChannelError::TokenRead {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_string(),
        ),
    };
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        insert(&mut md, "authorization", &format!("Bearer {token}"))?;
    }
    if let Some(id) = &config.cluster_id {
        insert(&mut md, "clusterid", id)?;
    }
    for (k, v) in &config.headers {
        insert(&mut md, k, v)?;
    }
    Ok(md)
}

/// Checks that every configured header can be sent (at build time, so a bad
/// header is a startup error rather than a reconnect loop).
pub(crate) fn validate_headers(config: &XdsConfig) -> Result<(), ChannelError> {
    let mut md = MetadataMap::new();
    if let Some(id) = &config.cluster_id {
        insert(&mut md, "clusterid", id)?;
    }
    for (k, v) in &config.headers {
        insert(&mut md, k, v)?;
    }
    Ok(())
}

fn insert(md: &mut MetadataMap, name: &str, value: &str) -> Result<(), ChannelError> {
    let bad = || ChannelError::InvalidHeader {
        name: name.to_string(),
    };
    let key =
        AsciiMetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| bad())?;
    let value = AsciiMetadataValue::try_from(value).map_err(|_| bad())?;
    md.insert(key, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NodeIdentity, ProxyType};

    fn cfg(address: &str) -> XdsConfig {
        XdsConfig::new(
            address,
            NodeIdentity::new(ProxyType::Ztunnel, vec![], "p", "ns", "n"),
        )
    }

    #[test]
    fn endpoint_checks_scheme_and_roots() {
        assert!(matches!(
            endpoint(&cfg("istiod:15012")),
            Err(ChannelError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            endpoint(&cfg("https://istiod:15012")),
            Err(ChannelError::MissingRootCert(_))
        ));
        let mut c = cfg("https://istiod:15012");
        c.root_cert = Some(RootCert::Pem("not pem".into()));
        assert!(matches!(
            endpoint(&c),
            Err(ChannelError::RootCertEmpty { .. })
        ));
        c.root_cert = Some(RootCert::File("/nonexistent/root.pem".into()));
        let err = endpoint(&c).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/root.pem"), "{err}");
        assert!(endpoint(&cfg("http://127.0.0.1:15010")).is_ok());
    }

    #[test]
    fn metadata_carries_token_cluster_and_headers() {
        let mut c = cfg("http://x:1");
        c.token = TokenSource::Literal(" tok \n".into());
        c.cluster_id = Some("Kubernetes".into());
        c.headers = vec![("X-Extra".into(), "1".into())];
        let md = stream_metadata(&c).unwrap();
        assert_eq!(md.get("authorization").unwrap(), "Bearer tok");
        assert_eq!(md.get("clusterid").unwrap(), "Kubernetes");
        assert_eq!(md.get("x-extra").unwrap(), "1");

        c.headers = vec![("bad header".into(), "1".into())];
        assert!(matches!(
            validate_headers(&c),
            Err(ChannelError::InvalidHeader { .. })
        ));
        c.headers.clear();
        c.token = TokenSource::File("/nonexistent/token".into());
        assert!(matches!(
            stream_metadata(&c),
            Err(ChannelError::TokenRead { .. })
        ));
    }
}
