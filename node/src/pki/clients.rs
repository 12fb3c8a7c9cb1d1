//! Loading what a node or a client needs from a certificates directory made
//! by `metro cluster init`: the cluster name and CA certificate (never the
//! CA key, which only `cluster init` needs) and one identity.
//!
//! Client identities are ordinary identity certificates whose ids lie in
//! the reserved range [`CLIENT_ID_MIN`]`..`[`CLIENT_ID_MIN`]`+`[`CLIENTS_MAX`];
//! nodes accept them on the client lane only (see `metro_fabric::host`).

use std::path::{Path, PathBuf};

use metro_fabric::env::NodeId;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::limits::CLIENTS_MAX;
use crate::pki::{CA_CERT_FILE, IDENTITY_DOMAIN, NodeIdentity, TlsError, validate_cluster_name};

/// The first client id; node ids must be below it.
pub const CLIENT_ID_MIN: NodeId = 1_000_000;

/// Whether `id` is in the reserved client range.
pub fn is_client_id(id: NodeId) -> bool {
    (CLIENT_ID_MIN..CLIENT_ID_MIN + CLIENTS_MAX).contains(&id)
}

/// The ids of the reserved client range.
pub fn client_ids() -> impl Iterator<Item = NodeId> {
    CLIENT_ID_MIN..CLIENT_ID_MIN + CLIENTS_MAX
}

/// Why the certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The directory or a file in it is missing.
    #[error("{what} not found at {path} (create it with `metro cluster init`)")]
    NotFound { what: &'static str, path: PathBuf },
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// The identity could not be loaded.
    #[error("identity {id} in {dir}: {source}")]
    Identity {
        id: NodeId,
        dir: PathBuf,
        source: TlsError,
    },
}

/// The cluster's trust root as found in a certificates directory.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The cluster name, from the CA certificate's `ca.<cluster>.metro` name.
    pub cluster: String,
    /// The CA certificate.
    pub ca: CertificateDer<'static>,
}

/// Loads `dir/ca.pem` and the cluster name it names.
pub fn load_trust(dir: &Path) -> Result<Trust, CertError> {
    let path = dir.join(CA_CERT_FILE);
    if !path.is_file() {
        return Err(CertError::NotFound {
            what: "cluster CA certificate",
            path,
        });
    }
    let invalid = |reason: String| CertError::Invalid {
        path: path.clone(),
        reason,
    };
    let pem = std::fs::read(&path).map_err(|e| invalid(e.to_string()))?;
    let ca = CertificateDer::from_pem_slice(&pem).map_err(|e| invalid(e.to_string()))?;
    let parsed = webpki::EndEntityCert::try_from(&ca).map_err(|e| invalid(e.to_string()))?;
    let suffix = format!(".{IDENTITY_DOMAIN}");
    let cluster = parsed
        .valid_dns_names()
        .filter_map(|n| n.strip_prefix("ca.")?.strip_suffix(suffix.as_str()))
        .find(|c| validate_cluster_name(c).is_ok())
        .map(str::to_owned)
        .ok_or_else(|| invalid("no ca.<cluster>.metro name".into()))?;
    Ok(Trust { cluster, ca })
}

/// Loads identity `id` (a node or a client) from `dir`.
pub fn load_identity(dir: &Path, trust: &Trust, id: NodeId) -> Result<NodeIdentity, CertError> {
    let cert = dir.join(crate::pki::node_cert_file(id));
    if !cert.is_file() {
        return Err(CertError::NotFound {
            what: "identity certificate",
            path: cert,
        });
    }
    NodeIdentity::load(dir, &trust.cluster, id).map_err(|source| CertError::Identity {
        id,
        dir: dir.to_owned(),
        source,
    })
}
