//! The demo's identities: a CA made in the demo's directory, and a certificate for each of its
//! processes, so the demo runs with mutual TLS and every call checked by role, as a real
//! installation should (docs/security.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use dasmesh_api::tls::{self, CertDir, IssueRequest, Role};

/// A CA in `DIR/pki/ca` and the certificates issued from it, each in `DIR/pki/NAME`.
pub struct Pki {
    root: PathBuf,
}

impl Pki {
    /// Makes the CA (valid for a day: the demo is short).
    pub fn make(dir: &Path) -> anyhow::Result<Pki> {
        let root = dir.join("pki");
        tls::init_ca(
            &root.join("ca"),
            "dasmesh demo",
            Duration::from_secs(24 * 3600),
        )
        .context("making the demo's CA")?;
        Ok(Pki { root })
    }

    /// Issues a certificate for `role` named `name` (serving also as 127.0.0.1) and returns its
    /// directory.
    pub fn issue(&self, role: Role, name: &str) -> anyhow::Result<PathBuf> {
        let out = self.root.join(name);
        let req = IssueRequest {
            role,
            name: name.into(),
            sans: vec!["127.0.0.1".into()],
            lifetime: Duration::from_secs(24 * 3600),
        };
        tls::issue(&self.root.join("ca"), &req, &out)
            .with_context(|| format!("issuing the demo's {role} certificate {name:?}"))?;
        Ok(out)
    }

    /// [`Pki::issue`], loaded.
    pub fn load(&self, role: Role, name: &str) -> anyhow::Result<CertDir> {
        let dir = self.issue(role, name)?;
        Ok(CertDir::load(&dir)?)
    }
}
