//! rustls and quinn configuration for [`crate::transport`]: mutual TLS
//! 1.3 on the `ring` provider, trust rooted in the cluster CA only.
//!
//! Contract:
//! - Server side: a client must present a certificate chaining to the
//!   cluster CA (`WebPkiClientVerifier`) AND naming, via its identity SAN
//!   (`node-<id>.<cluster>.metro`, see [`crate::pki`]), a node in the
//!   [`AllowList`]. Both are checked during the handshake, so a refused
//!   client never gets a stream served.
//! - Client side: the server must present a certificate chaining to the
//!   cluster CA that is valid for the server name `node-<id>.<cluster>.metro`
//!   of the node being dialed; the caller checks the [`AllowList`] before
//!   dialing.
//! - ALPN is [`ALPN`]; only TLS 1.3 is offered (QUIC requires it).

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use metro_fabric::env::NodeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::limits::{
    CONCURRENT_STREAMS_MAX, CONNECTION_RECEIVE_WINDOW_BYTES, QUIC_IDLE_TIMEOUT_MS,
    QUIC_KEEP_ALIVE_INTERVAL_MS, SEND_WINDOW_BYTES, STREAM_RECEIVE_WINDOW_BYTES,
};
use crate::pki::{NodeIdentity, TlsError, node_id_from_cert};

/// The application protocol negotiated on every metro QUIC connection.
pub const ALPN: &[u8] = b"metro/1";

/// The set of node ids allowed to talk to this node, shared between the TLS
/// verifier and the transport; updatable at runtime.
#[derive(Clone, Debug, Default)]
pub struct AllowList(Arc<RwLock<BTreeSet<NodeId>>>);

impl AllowList {
    /// An allow list holding `nodes`.
    pub fn new(nodes: impl IntoIterator<Item = NodeId>) -> Self {
        Self(Arc::new(RwLock::new(nodes.into_iter().collect())))
    }

    /// Whether `node` is allowed.
    pub fn contains(&self, node: NodeId) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&node)
    }

    /// Allows `node`.
    pub fn insert(&self, node: NodeId) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node);
    }

    /// Disallows `node`; its existing connections are closed on their next
    /// request.
    pub fn remove(&self, node: NodeId) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&node);
    }

    /// A snapshot of the allowed ids.
    pub fn to_set(&self) -> BTreeSet<NodeId> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Checks the chain with webpki, then the identity against the allow list.
#[derive(Debug)]
struct AllowListVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    cluster: String,
    allowed: AllowList,
}

impl ClientCertVerifier for AllowListVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let node = node_id_from_cert(&self.cluster, end_entity)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if !self.allowed.contains(node) {
            tracing::warn!(node, "refusing TLS client: node not in the allowed set");
            return Err(rustls::Error::General(format!(
                "node {node} is not allowed"
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// QUIC transport parameters shared by both sides.
pub fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config
        .max_concurrent_bidi_streams(CONCURRENT_STREAMS_MAX.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(QUIC_IDLE_TIMEOUT_MS))
                .unwrap_or(quinn::VarInt::MAX.into()),
        ))
        .keep_alive_interval(Some(Duration::from_millis(QUIC_KEEP_ALIVE_INTERVAL_MS)))
        .stream_receive_window(STREAM_RECEIVE_WINDOW_BYTES.into())
        .receive_window(CONNECTION_RECEIVE_WINDOW_BYTES.into())
        .send_window(SEND_WINDOW_BYTES)
        .datagram_receive_buffer_size(None);
    config
}

/// The server configuration of a node: its identity, trust in `ca`, and the
/// allow list checked during every handshake.
pub fn server_config(
    identity: &NodeIdentity,
    ca: &CertificateDer<'static>,
    allowed: AllowList,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let verifier = AllowListVerifier {
        inner,
        cluster: identity.cluster().to_owned(),
        allowed,
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![identity.cert_der()?], identity.key_der()?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    config.migration(false);
    Ok(config)
}

/// The client configuration of a node: trust in `ca` only, presenting
/// `identity` when given (a client without one is refused by every server;
/// `None` exists for tests and diagnostics).
pub fn client_config(
    identity: Option<&NodeIdentity>,
    ca: &CertificateDer<'static>,
) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?);
    let mut tls = match identity {
        Some(identity) => {
            builder.with_client_auth_cert(vec![identity.cert_der()?], identity.key_der()?)?
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// The node id a connection's peer proved during the handshake.
pub fn peer_node_id(conn: &quinn::Connection, cluster: &str) -> Result<NodeId, TlsError> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| TlsError::NoIdentity("peer presented no certificate".into()))?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoIdentity("peer identity is not a certificate chain".into()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::NoIdentity("empty certificate chain".into()))?;
    node_id_from_cert(cluster, leaf)
}
