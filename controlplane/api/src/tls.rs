//! Identities on the control plane: a cluster CA, one certificate per identity (a role and a
//! name), and the TLS configurations every binary builds from its certificate directory.
//!
//! A CA directory holds `ca.pem` and `ca-key.pem` (the key only its owner may read). An
//! identity's directory holds `cert.pem`, `key.pem` and a copy of `ca.pem`. A certificate
//! names its identity in its subject: the common name is the name, the organizational unit the
//! role (`controller`, `node`, `host`, `operator`). Both ends of every gRPC connection show a
//! certificate of the cluster's CA (mutual TLS); the server reads the client's identity from it.
//! Keys are ECDSA P-256, made and signed by `rcgen` on `ring`; TLS is rustls through tonic.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity, ServerTlsConfig};

/// The CA's certificate, in a CA directory and beside every identity's certificate.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key, in the CA directory only.
pub const CA_KEY: &str = "ca-key.pem";
/// An identity's certificate.
pub const CERT: &str = "cert.pem";
/// An identity's private key.
pub const KEY: &str = "key.pem";

/// The environment variable that names a certificate directory where `--cert` is not given.
pub const CERT_ENV: &str = "DASMESH_CERT";

/// How long a certificate is valid unless told otherwise.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the CA's certificate is valid unless told otherwise.
pub const DEFAULT_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What an identity may do on the control plane (see the controller's table of calls by role).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A controller: serves the API.
    Controller,
    /// A storage node: registers itself, reports its devices, heartbeats.
    Node,
    /// A host: mounts volumes and looks after its own leases.
    Host,
    /// An operator: everything.
    Operator,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Controller, Role::Node, Role::Host, Role::Operator];

    /// The word in certificates and on the command line.
    pub fn word(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Node => "node",
            Role::Host => "host",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl std::str::FromStr for Role {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Role, TlsError> {
        Role::ALL
            .into_iter()
            .find(|r| r.word() == s)
            .ok_or_else(|| {
                TlsError::Bad(format!(
                    "unknown role {s:?}: expected controller, node, host or operator"
                ))
            })
    }
}

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// What it may do.
    pub role: Role,
    /// Its name: a node's, a host's, an operator's or a controller's.
    pub name: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)
    }
}

/// A failure to make, read or use certificates.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {why}")]
    Io {
        /// The file.
        path: String,
        /// What the system said.
        why: String,
    },
    /// A certificate, key or argument is not what it must be.
    #[error("{0}")]
    Bad(String),
}

fn io_err(path: &Path, e: std::io::Error) -> TlsError {
    TlsError::Io {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| io_err(path, e))
}

/// Writes `bytes` to `path` through a temporary file and a rename, readable by its owner only
/// when `secret`.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

fn rcgen_err(what: &str, e: rcgen::Error) -> TlsError {
    TlsError::Bad(format!("{what}: {e}"))
}

fn validity(p: &mut CertificateParams, lifetime: Duration) -> Result<(), TlsError> {
    validity_from(p, lifetime, time::OffsetDateTime::now_utc())
}

fn validity_from(
    p: &mut CertificateParams,
    lifetime: Duration,
    now: time::OffsetDateTime,
) -> Result<(), TlsError> {
    if lifetime < Duration::from_secs(60) || lifetime > Duration::from_secs(100 * 365 * 24 * 3600) {
        return Err(TlsError::Bad(format!(
            "a lifetime of {} s: expected between a minute and 100 years",
            lifetime.as_secs()
        )));
    }
    // A little slack for clocks that are slightly behind the issuer's.
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
    Ok(())
}

/// Makes a cluster CA in `dir` (created if missing): `ca.pem` and `ca-key.pem`. Refuses to
/// overwrite a CA that is there already.
pub fn init_ca(dir: &Path, name: &str, lifetime: Duration) -> Result<(), TlsError> {
    let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if cert.exists() || key.exists() {
        return Err(TlsError::Bad(format!(
            "{} already holds a CA: refusing to replace it (every certificate it issued would stop working)",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let kp = KeyPair::generate().map_err(|e| rcgen_err("making the CA's key", e))?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name
        .push(DnType::OrganizationName, "dasmesh cluster CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p, lifetime)?;
    let c = p
        .self_signed(&kp)
        .map_err(|e| rcgen_err("signing the CA", e))?;
    write_file(&key, kp.serialize_pem().as_bytes(), true)?;
    write_file(&cert, c.pem().as_bytes(), false)
}

/// What to put in a certificate.
#[derive(Clone, Debug)]
pub struct IssueRequest {
    /// The role.
    pub role: Role,
    /// The name (a host name, a node's name, an operator's).
    pub name: String,
    /// Names and addresses the holder serves under (a controller's, for clients to check);
    /// the name itself is always one.
    pub sans: Vec<String>,
    /// How long it is valid.
    pub lifetime: Duration,
}

fn check_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(TlsError::Bad(format!(
            "bad name {name:?}: 1-128 of letters, digits and - _ . : @"
        )))
    }
}

fn san(s: &str) -> Result<SanType, TlsError> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = s
        .to_string()
        .try_into()
        .map_err(|e| TlsError::Bad(format!("bad name for the certificate {s:?}: {e}")))?;
    Ok(SanType::DnsName(dns))
}

/// Issues a certificate and a new key for `req` with the CA in `ca_dir`, into `out` (created
/// if missing): `cert.pem`, `key.pem` and a copy of the CA's `ca.pem`.
pub fn issue(ca_dir: &Path, req: &IssueRequest, out: &Path) -> Result<(), TlsError> {
    issue_at(ca_dir, req, out, std::time::SystemTime::now())
}

/// [`issue`] as if it were `now` (tests make certificates that expired, or are not valid yet).
pub fn issue_at(
    ca_dir: &Path,
    req: &IssueRequest,
    out: &Path,
    now: std::time::SystemTime,
) -> Result<(), TlsError> {
    check_name(&req.name)?;
    let ca_pem = read(&ca_dir.join(CA_CERT))?;
    let ca_key_path = ca_dir.join(CA_KEY);
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)
        .map_err(|e| rcgen_err(&format!("reading {}", ca_key_path.display()), e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| rcgen_err("reading the CA's certificate", e))?;
    let kp = KeyPair::generate().map_err(|e| rcgen_err("making a key", e))?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, &req.name);
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, req.role.word());
    let mut sans = vec![req.name.clone()];
    for s in &req.sans {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    p.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every identity is a TLS client somewhere; controllers serve the API and nodes the data
    // protocol (when it runs over TLS).
    p.extended_key_usages = match req.role {
        Role::Controller | Role::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Host | Role::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    validity_from(&mut p, req.lifetime, now.into())?;
    let c = p
        .signed_by(&kp, &issuer)
        .map_err(|e| rcgen_err("signing the certificate", e))?;
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    write_file(&out.join(KEY), kp.serialize_pem().as_bytes(), true)?;
    write_file(&out.join(CERT), c.pem().as_bytes(), false)?;
    write_file(&out.join(CA_CERT), ca_pem.as_bytes(), false)
}

/// Issues `dir`'s certificate again (same role, name and names served under; a new key) for
/// `lifetime` from now.
pub fn renew(ca_dir: &Path, dir: &Path, lifetime: Duration) -> Result<(), TlsError> {
    let (id, sans) = read_cert(&dir.join(CERT))?;
    let req = IssueRequest {
        role: id.role,
        name: id.name,
        sans,
        lifetime,
    };
    issue(ca_dir, &req, dir)
}

fn pem_der(pem: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| TlsError::Bad(format!("{}: not a PEM certificate: {e}", path.display())))?;
    Ok(p.contents)
}

/// The identity and served names of the certificate at `path`.
fn read_cert(path: &Path) -> Result<(Identity, Vec<String>), TlsError> {
    let der = pem_der(&read(path)?, path)?;
    let id = identity_of(&der).map_err(|e| TlsError::Bad(format!("{}: {e}", path.display())))?;
    let (_, c) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| TlsError::Bad(format!("{}: {e}", path.display())))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = c.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).map(std::net::IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*b).map(std::net::IpAddr::from).ok(),
                        _ => None,
                    };
                    sans.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok((id, sans))
}

/// When `c`'s certificate stops being valid (RFC 3339) and the names it serves under.
pub fn validity_of(c: &CertDir) -> Result<(String, Vec<String>), TlsError> {
    let path = c.dir.join(CERT);
    let der = pem_der(&c.cert, &path)?;
    let (_, x) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| TlsError::Bad(format!("{}: {e}", path.display())))?;
    let not_after = x
        .validity()
        .not_after
        .to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| x.validity().not_after.to_string());
    let (_, sans) = read_cert(&path)?;
    Ok((not_after, sans))
}

/// The identity a certificate (DER) names: its common name and its organizational unit.
pub fn identity_of(der: &[u8]) -> Result<Identity, TlsError> {
    let (_, c) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Bad(format!("not an X.509 certificate: {e}")))?;
    let subject = c.subject();
    let one = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>,
               what: &str| {
        let v: Vec<_> = it.collect();
        match v.as_slice() {
            [one] => one
                .as_str()
                .map(str::to_string)
                .map_err(|e| TlsError::Bad(format!("its {what} is not text: {e}"))),
            [] => Err(TlsError::Bad(format!("it names no {what}"))),
            _ => Err(TlsError::Bad(format!("it names more than one {what}"))),
        }
    };
    let name = one(&mut subject.iter_common_name(), "common name (the name)")?;
    let role = one(
        &mut subject.iter_organizational_unit(),
        "organizational unit (the role)",
    )?;
    check_name(&name)?;
    Ok(Identity {
        role: role.parse()?,
        name,
    })
}

/// A loaded certificate directory: what one binary shows and trusts.
#[derive(Clone)]
pub struct CertDir {
    dir: PathBuf,
    ca: String,
    cert: String,
    key: String,
    /// Who the certificate says this is.
    pub identity: Identity,
}

impl fmt::Debug for CertDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertDir")
            .field("dir", &self.dir)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl CertDir {
    /// Reads `dir` (`ca.pem`, `cert.pem`, `key.pem`): every file must be there and the
    /// certificate must name an identity.
    pub fn load(dir: &Path) -> Result<CertDir, TlsError> {
        let ca = read(&dir.join(CA_CERT))?;
        let cert_path = dir.join(CERT);
        let cert = read(&cert_path)?;
        let key = read(&dir.join(KEY))?;
        pem_der(&ca, &dir.join(CA_CERT))?;
        let (identity, _) = read_cert(&cert_path)?;
        Ok(CertDir {
            dir: dir.to_path_buf(),
            ca,
            cert,
            key,
            identity,
        })
    }

    /// `--cert DIR` if given, else the directory `DASMESH_CERT` names, else none.
    pub fn from_flag_or_env(flag: Option<&Path>) -> Result<Option<CertDir>, TlsError> {
        let env = std::env::var_os(CERT_ENV).filter(|v| !v.is_empty());
        match flag.map(Path::to_path_buf).or(env.map(PathBuf::from)) {
            Some(d) => CertDir::load(&d).map(Some),
            None => Ok(None),
        }
    }

    /// The directory it was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server that shows this certificate and requires one of the same CA from every client.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(TlsIdentity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// A client that shows this certificate and trusts servers of the same CA only.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(TlsIdentity::from_pem(&self.cert, &self.key))
    }

    fn rustls_parts(&self) -> Result<DataTlsParts, TlsError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: &dyn fmt::Display| {
            TlsError::Bad(format!("{}: {what}: {e}", self.dir.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca.as_bytes()) {
            let c = c.map_err(|e| bad(CA_CERT, &e))?;
            roots.add(c).map_err(|e| bad(CA_CERT, &e))?;
        }
        let chain = CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(CERT, &e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes()).map_err(|e| bad(KEY, &e))?;
        Ok((roots, chain, key))
    }

    /// The data plane's TLS server (a node with `--tls`): shows this certificate and requires
    /// a certificate of the same CA from every client.
    pub fn data_server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsError> {
        self.server_of(true, &[])
    }

    /// The controller's HTTPS server (`--http`: console and metrics): shows this certificate
    /// and asks every client for one of the same CA, but lets a client without one in (a
    /// browser, to be told in words how to sign in); a certificate shown must be valid.
    pub fn http_server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsError> {
        self.server_of(false, &[b"http/1.1"])
    }

    fn server_of(
        &self,
        require_client: bool,
        alpn: &[&[u8]],
    ) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsError> {
        let (roots, chain, key) = self.rustls_parts()?;
        let provider = ring_provider();
        let bad = |e: &dyn fmt::Display| TlsError::Bad(format!("{}: {e}", self.dir.display()));
        let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider.clone(),
        );
        if !require_client {
            verifier = verifier.allow_unauthenticated();
        }
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .with_client_cert_verifier(verifier.build().map_err(|e| bad(&e))?)
            .with_single_cert(chain, key)
            .map_err(|e| bad(&e))?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(std::sync::Arc::new(cfg))
    }

    /// The data plane's TLS client: shows this certificate and trusts nodes whose certificate is
    /// of the same CA and names the address it is reached at (`--san` when it was issued).
    pub fn data_client_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, TlsError> {
        let (roots, chain, key) = self.rustls_parts()?;
        let provider = ring_provider();
        let bad = |e: &dyn fmt::Display| TlsError::Bad(format!("{}: {e}", self.dir.display()));
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad(&e))?;
        Ok(std::sync::Arc::new(cfg))
    }
}

/// rustls on *ring*, as tonic's TLS here is (aws-lc-rs, rustls' own default, needs a C and
/// assembler toolchain at build time). rustls 0.23.48 deprecated this provider for lacking
/// post-quantum key exchange; the classical groups it has are what the controller's TLS uses too.
#[allow(deprecated)]
fn ring_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

type DataTlsParts = (
    rustls::RootCertStore,
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);
