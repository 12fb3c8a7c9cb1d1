//! The cluster's certificate authority and the node certificates it issues.
//!
//! Contract:
//! - One CA per cluster (`ClusterCa`), self-signed, Ed25519, valid for
//!   [`CA_VALIDITY_DAYS`], path length 0 (it signs node certificates only).
//! - A node certificate (`NodeIdentity`) carries the node's identity as the
//!   SAN DNS name `node-<id>.<cluster>.metro` (see [`node_dns_name`]), also
//!   used as the subject CN; extra host names and IP addresses given at issue
//!   time are added as further SANs but never count as identity. Its extended
//!   key usages are both TLS server and TLS client auth, because every node
//!   dials and accepts. Valid for [`NODE_VALIDITY_DAYS`].
//! - The CA certificate also carries the SAN DNS name `ca.<cluster>.metro`, so
//!   that [`ClusterCa::load`] can recover the cluster name from `ca.pem`.
//! - On disk (one directory per cluster): `ca.pem`, `ca.key`,
//!   `node-<id>.pem`, `node-<id>.key`. Keys are PKCS#8 PEM written with mode
//!   0600; nothing is ever overwritten (files are created with `create_new`).
//! - Cluster names are lowercase DNS labels (`[a-z0-9-]`, 1..=63 bytes, no
//!   leading or trailing `-`) so that the identity name is a valid DNS name.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::limits::{
    CA_VALIDITY_DAYS, CLOCK_SKEW_ALLOWANCE_MS, CLUSTER_NAME_BYTES_MAX, NODE_VALIDITY_DAYS,
};
use metro_fabric::env::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the CA certificate inside a cluster directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a cluster directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// DNS suffix under which all identity names live.
pub const IDENTITY_DOMAIN: &str = "metro";
/// Mode of private key files.
pub const KEY_FILE_MODE: u32 = 0o600;

/// Errors of CA and certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid cluster name {name:?}: {reason}")]
    InvalidClusterName { name: String, reason: &'static str },
    #[error("invalid subject alternative name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} already exists; refusing to overwrite it")]
    AlreadyExists { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid PEM {what}: {reason}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("certificate carries no usable identity: {0}")]
    NoIdentity(String),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The identity DNS name of `node` in `cluster`: `node-<id>.<cluster>.metro`.
pub fn node_dns_name(cluster: &str, node: NodeId) -> String {
    format!("node-{node}.{cluster}.{IDENTITY_DOMAIN}")
}

/// The SAN DNS name the CA certificate carries: `ca.<cluster>.metro`.
pub fn ca_dns_name(cluster: &str) -> String {
    format!("ca.{cluster}.{IDENTITY_DOMAIN}")
}

/// File name of a node's certificate: `node-<id>.pem`.
pub fn node_cert_file(node: NodeId) -> String {
    format!("node-{node}.pem")
}

/// File name of a node's private key: `node-<id>.key`.
pub fn node_key_file(node: NodeId) -> String {
    format!("node-{node}.key")
}

/// Checks that `name` is usable as a cluster name (one lowercase DNS label).
pub fn validate_cluster_name(name: &str) -> Result<(), TlsError> {
    let bad = |reason| {
        Err(TlsError::InvalidClusterName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > CLUSTER_NAME_BYTES_MAX {
        return bad("must be 1 to 63 bytes long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only a-z, 0-9 and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must not start or end with '-'");
    }
    Ok(())
}

/// Extracts the node id from a certificate's identity SAN for `cluster`.
///
/// Exactly one SAN DNS name of the form `node-<id>.<cluster>.metro` must be
/// present; any other names are ignored. The certificate's chain is NOT
/// checked here: call this only on a certificate rustls has verified.
pub fn node_id_from_cert(cluster: &str, cert: &CertificateDer<'_>) -> Result<NodeId, TlsError> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| TlsError::NoIdentity(format!("unparsable certificate: {e}")))?;
    let suffix = format!(".{cluster}.{IDENTITY_DOMAIN}");
    let mut found = None;
    for name in parsed.valid_dns_names() {
        let Some(id) = name
            .strip_suffix(suffix.as_str())
            .and_then(|rest| rest.strip_prefix("node-"))
        else {
            continue;
        };
        let id: NodeId = id
            .parse()
            .map_err(|_| TlsError::NoIdentity(format!("bad node id in {name:?}")))?;
        if found.replace(id).is_some() {
            return Err(TlsError::NoIdentity("several identity names".into()));
        }
    }
    found.ok_or_else(|| TlsError::NoIdentity(format!("no node-<id>{suffix} name")))
}

/// A cluster's certificate authority: its certificate and signing key.
pub struct ClusterCa {
    cluster: String,
    key: KeyPair,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// The parameters that define the CA as an issuer. Deterministic in the
/// cluster name, so a CA loaded from disk issues certificates whose issuer
/// name matches the stored CA certificate's subject byte for byte.
fn ca_params(cluster: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(vec![ca_dns_name(cluster)])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "metro");
    dn.push(DnType::CommonName, format!("metro cluster {cluster} CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::milliseconds(CLOCK_SKEW_ALLOWANCE_MS);
    params.not_after = now + time::Duration::days(days);
}

impl ClusterCa {
    /// Generates a new CA (fresh Ed25519 key) for `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, TlsError> {
        validate_cluster_name(cluster)?;
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let mut params = ca_params(cluster)?;
        validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cluster: cluster.to_owned(),
            key,
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
        })
    }

    /// The cluster this CA belongs to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The CA certificate (the trust root of every node), DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `node`. `extra_names` are host names or IP
    /// addresses (parsed as IPs when they are) added as SANs for operators'
    /// tools; they carry no identity.
    pub fn issue_node(
        &self,
        node: NodeId,
        extra_names: &[String],
    ) -> Result<NodeIdentity, TlsError> {
        let identity = node_dns_name(&self.cluster, node);
        let mut params = CertificateParams::new(vec![identity.clone()])?;
        for name in extra_names {
            params.subject_alt_names.push(san(name)?);
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "metro");
        dn.push(DnType::CommonName, identity);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, NODE_VALIDITY_DAYS);
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let issuer = Issuer::new(ca_params(&self.cluster)?, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(NodeIdentity {
            cluster: self.cluster.clone(),
            node,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem` and `ca.key` into `dir` (created if missing). Refuses
    /// with [`TlsError::AlreadyExists`] if either file exists. Returns the
    /// paths written.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>, TlsError> {
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        for path in [&cert, &key] {
            if path.exists() {
                return Err(TlsError::AlreadyExists { path: path.clone() });
            }
        }
        create_dir(dir)?;
        write_new(&key, self.key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
        write_new(&cert, self.cert_pem.as_bytes(), 0o644)?;
        Ok(vec![cert, key])
    }

    /// Loads the CA from `dir/ca.pem` and `dir/ca.key`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read(&cert_path)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| pem_error(&cert_path, "certificate", e.to_string()))?;
        let key = KeyPair::from_pem(&read(&key_path)?)
            .map_err(|e| pem_error(&key_path, "private key", e.to_string()))?;
        let cluster = cluster_from_ca_cert(&cert_der)?;
        Ok(Self {
            cluster,
            key,
            cert_pem,
            cert_der,
        })
    }
}

fn cluster_from_ca_cert(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| TlsError::NoIdentity(format!("unparsable CA certificate: {e}")))?;
    let suffix = format!(".{IDENTITY_DOMAIN}");
    parsed
        .valid_dns_names()
        .filter_map(|n| n.strip_prefix("ca.")?.strip_suffix(suffix.as_str()))
        .find(|c| validate_cluster_name(c).is_ok())
        .map(str::to_owned)
        .ok_or_else(|| TlsError::NoIdentity("CA certificate has no ca.<cluster>.metro name".into()))
}

fn san(name: &str) -> Result<SanType, TlsError> {
    if let Ok(ip) = name.parse() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = name
        .try_into()
        .map_err(|e: rcgen::Error| TlsError::InvalidName {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(SanType::DnsName(dns))
}

/// A node's certificate and private key, as issued by its [`ClusterCa`].
pub struct NodeIdentity {
    cluster: String,
    node: NodeId,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("cluster", &self.cluster)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// The node this identity names.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The cluster this identity belongs to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| pem_error(Path::new("<memory>"), "certificate", e.to_string()))
    }

    /// The private key, DER (PKCS#8).
    pub fn key_der(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| pem_error(Path::new("<memory>"), "private key", e.to_string()))
    }

    /// Writes `node-<id>.pem` and `node-<id>.key` (mode 0600) into `dir`,
    /// refusing to overwrite. Returns the paths written.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>, TlsError> {
        let cert = dir.join(node_cert_file(self.node));
        let key = dir.join(node_key_file(self.node));
        create_dir(dir)?;
        write_new(&key, self.key_pem.as_bytes(), KEY_FILE_MODE)?;
        write_new(&cert, self.cert_pem.as_bytes(), 0o644)?;
        Ok(vec![cert, key])
    }

    /// Loads `node`'s certificate and key from `dir`; the node id and cluster
    /// are checked against the certificate's identity name.
    pub fn load(dir: &Path, cluster: &str, node: NodeId) -> Result<Self, TlsError> {
        let cert_path = dir.join(node_cert_file(node));
        let key_path = dir.join(node_key_file(node));
        let identity = Self {
            cluster: cluster.to_owned(),
            node,
            cert_pem: read(&cert_path)?,
            key_pem: read(&key_path)?,
        };
        let der = identity
            .cert_der()
            .map_err(|e| pem_error(&cert_path, "certificate", e.to_string()))?;
        identity
            .key_der()
            .map_err(|e| pem_error(&key_path, "private key", e.to_string()))?;
        let named = node_id_from_cert(cluster, &der)?;
        if named != node {
            return Err(TlsError::NoIdentity(format!(
                "{} names node {named}, not {node}",
                cert_path.display()
            )));
        }
        Ok(identity)
    }
}

fn pem_error(path: &Path, what: &'static str, reason: String) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        what,
        reason,
    }
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let io_err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::AlreadyExists {
                path: path.to_owned(),
            }
        } else {
            TlsError::Io {
                path: path.to_owned(),
                source,
            }
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err)?;
    file.write_all(bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_the_certificate() {
        let ca = ClusterCa::generate("east").expect("ca");
        let node = ca
            .issue_node(7, &["10.0.0.7".into(), "host7.example".into()])
            .expect("issue");
        let der = node.cert_der().expect("der");
        assert_eq!(node_id_from_cert("east", &der).expect("id"), 7);
        assert!(node_id_from_cert("west", &der).is_err());
        assert_eq!(cluster_from_ca_cert(ca.cert_der()).expect("name"), "east");
    }

    #[test]
    fn cluster_names_are_dns_labels() {
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"x".repeat(64)] {
            assert!(validate_cluster_name(bad).is_err(), "{bad:?}");
        }
        validate_cluster_name("metro-1").expect("valid");
    }
}
