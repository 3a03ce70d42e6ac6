//! `dasmesh ca init` and `dasmesh cert issue|renew|show`: the cluster's CA and one certificate
//! per identity (see `dasmesh_api::tls`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use dasmesh_api::tls::{self, CertDir, IssueRequest, Role};

/// The cluster's certificate authority.
#[derive(Subcommand)]
pub enum CaCmd {
    /// Make a new CA in DIR (ca.pem, and ca-key.pem readable by its owner only). Keep DIR
    /// offline: whoever holds ca-key.pem can make any identity.
    Init(CaInitArgs),
}

/// `dasmesh ca init`.
#[derive(Args)]
pub struct CaInitArgs {
    /// Where the CA goes (made if missing; an existing CA is never replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// The CA's name, in every certificate it issues.
    #[arg(long, default_value = "dasmesh")]
    pub name: String,
    /// How long the CA is valid.
    #[arg(long, default_value = "10years", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
}

/// Certificates of identities.
#[derive(Subcommand)]
pub enum CertCmd {
    /// Issue a certificate and a new key for one identity into DIR (cert.pem, key.pem, and a
    /// copy of ca.pem): give DIR to that binary as --cert DIR or DASMESH_CERT=DIR.
    Issue(IssueArgs),
    /// Issue DIR's certificate again with a new key (same role, name and addresses), for
    /// LIFETIME from now; the binary using DIR picks it up when it restarts.
    Renew(RenewArgs),
    /// Show who DIR's certificate names.
    Show {
        /// The certificate directory.
        dir: PathBuf,
    },
}

/// `dasmesh cert issue`.
#[derive(Args)]
pub struct IssueArgs {
    /// The CA's directory (`dasmesh ca init --out`).
    #[arg(long)]
    pub ca: PathBuf,
    /// controller, node, host or operator.
    #[arg(long)]
    pub role: Role,
    /// The identity's name: a node's or a host's name, an operator's, a controller's.
    #[arg(long)]
    pub name: String,
    /// More names or IP addresses it serves under (a controller's address, as clients write it
    /// in their URLs: e.g. 127.0.0.1,ctl1.example; a node's data-plane address, for --tls).
    #[arg(long, value_delimiter = ',')]
    pub san: Vec<String>,
    /// How long it is valid.
    #[arg(long, default_value = "1year", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
    /// Where the certificate, its key and the CA's certificate go.
    #[arg(long)]
    pub out: PathBuf,
}

/// `dasmesh cert renew`.
#[derive(Args)]
pub struct RenewArgs {
    /// The CA's directory.
    #[arg(long)]
    pub ca: PathBuf,
    /// The certificate directory to renew.
    #[arg(long)]
    pub dir: PathBuf,
    /// How long the new certificate is valid.
    #[arg(long, default_value = "1year", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
}

/// Runs `dasmesh ca ...`.
pub fn ca(cmd: CaCmd) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Init(a) => {
            tls::init_ca(&a.out, &a.name, a.lifetime)?;
            println!(
                "CA {:?} made in {}: {} (give it to nobody), {}",
                a.name,
                a.out.display(),
                tls::CA_KEY,
                tls::CA_CERT
            );
            Ok(())
        }
    }
}

/// Runs `dasmesh cert ...`.
pub fn cert(cmd: CertCmd, json: bool) -> anyhow::Result<()> {
    let dir = match cmd {
        CertCmd::Issue(a) => {
            let req = IssueRequest {
                role: a.role,
                name: a.name,
                sans: a.san,
                lifetime: a.lifetime,
            };
            tls::issue(&a.ca, &req, &a.out)?;
            a.out
        }
        CertCmd::Renew(a) => {
            tls::renew(&a.ca, &a.dir, a.lifetime)?;
            a.dir
        }
        CertCmd::Show { dir } => dir,
    };
    let c = CertDir::load(&dir).with_context(|| format!("{}", dir.display()))?;
    let (not_after, sans) = tls::validity_of(&c)?;
    if json {
        let doc = serde_json::json!({
            "dir": dir.display().to_string(),
            "role": c.identity.role.word(),
            "name": c.identity.name,
            "names": sans,
            "not_after": not_after,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "{}: {}, serving as {}, valid until {not_after}",
            dir.display(),
            c.identity,
            sans.join(",")
        );
    }
    Ok(())
}
