//! `dasmesh keygen` and `dasmesh token mint|show`.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use dasmesh_wire::units::{format_size, parse_range};
use dasmesh_wire::{
    key_to_text, signing_key_from_text, Claim, DeviceId, Epoch, NodeId, Rights, SigningKey, Terms,
    Token, VolumeId,
};

/// `dasmesh keygen`.
#[derive(Args)]
pub struct KeygenArgs {
    /// Directory to write signing.key and public.key into (created if absent).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite an existing signing.key.
    #[arg(long)]
    force: bool,
}

/// `dasmesh token ...`.
#[derive(Subcommand)]
pub enum TokenCmd {
    /// Sign a token lending a byte range of one device.
    Mint(MintArgs),
    /// Print a token's claim (not verified).
    Show(ShowArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum RightsArg {
    Ro,
    Rw,
}

/// `dasmesh token mint`.
#[derive(Args)]
pub struct MintArgs {
    /// Directory holding signing.key.
    #[arg(long)]
    key: PathBuf,
    /// The node the token is for (0: any node).
    #[arg(long, default_value_t = 0)]
    node: u64,
    /// The device on that node.
    #[arg(long)]
    device: u32,
    /// Byte range START..END with units, e.g. 0..2G (multiples of 512; the node refuses, with
    /// Misaligned, a range off its device's block size, often 4096, and with OutOfRange one
    /// touching its --reserve area).
    #[arg(long)]
    range: String,
    /// ro or rw.
    #[arg(long)]
    rights: RightsArg,
    /// How long the token is valid, e.g. 1h, 30m.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Fencing epoch.
    #[arg(long, default_value_t = 1)]
    epoch: u64,
    /// Volume id recorded in the claim.
    #[arg(long, default_value_t = 0)]
    volume: u64,
    /// IOPS promised to the range (docs/qos.md).
    #[arg(long, default_value_t = 0)]
    min_iops: u32,
    /// IOPS the range is capped at (0: no cap).
    #[arg(long, default_value_t = 0)]
    max_iops: u32,
    /// MiB/s promised to the range.
    #[arg(long, default_value_t = 0)]
    min_mib_s: u16,
    /// MiB/s the range is capped at (0: no cap).
    #[arg(long, default_value_t = 0)]
    max_mib_s: u16,
    /// The range's weight in spare capacity (1..=255; 0: the default, 100).
    #[arg(long, default_value_t = 0)]
    weight: u8,
    /// How many operations a read counts for against the caps (a mirror's copies; 0: one).
    #[arg(long, default_value_t = 0)]
    read_cost: u8,
}

/// `dasmesh token show`.
#[derive(Args)]
pub struct ShowArgs {
    /// File holding the token text; standard input if absent.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Set from the global --json.
    #[arg(skip)]
    pub json: bool,
}

/// Writes a new key pair.
pub fn keygen(a: &KeygenArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let sk_path = a.out.join("signing.key");
    if sk_path.exists() && !a.force {
        bail!(
            "{} exists; refusing to overwrite a signing key (use --force)",
            sk_path.display()
        );
    }
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    write_private(&sk_path, &format!("{}\n", key_to_text(&key.to_bytes())))?;
    let pk_path = a.out.join("public.key");
    std::fs::write(
        &pk_path,
        format!("{}\n", key_to_text(key.verifying_key().as_bytes())),
    )
    .with_context(|| format!("writing {}", pk_path.display()))?;
    println!("wrote {} and {}", sk_path.display(), pk_path.display());
    Ok(())
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Reads a token from a file (one line of text).
pub fn read_token(path: &std::path::Path) -> anyhow::Result<Token> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Token::from_text(&text).with_context(|| format!("token in {}", path.display()))
}

/// Runs a token subcommand.
pub fn token(cmd: TokenCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Mint(a) => mint(&a),
        TokenCmd::Show(mut a) => {
            a.json = json;
            show(&a)
        }
    }
}

fn mint(a: &MintArgs) -> anyhow::Result<()> {
    let sk_path = a.key.join("signing.key");
    let text = std::fs::read_to_string(&sk_path)
        .with_context(|| format!("reading {}", sk_path.display()))?;
    let key = signing_key_from_text(&text).with_context(|| format!("{}", sk_path.display()))?;
    let (start, end) = parse_range(&a.range)?;
    if !start.is_multiple_of(512) || !end.is_multiple_of(512) || start == end {
        bail!(
            "--range {}: start and end must be multiples of 512 and the range non-empty",
            a.range
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let claim = Claim {
        node_id: NodeId(a.node),
        volume_id: VolumeId(a.volume),
        device_id: DeviceId(a.device),
        range_offset: start,
        range_length: end - start,
        rights: match a.rights {
            RightsArg::Ro => Rights::ReadOnly,
            RightsArg::Rw => Rights::ReadWrite,
        },
        epoch: Epoch(a.epoch),
        issued_at_ms: now,
        expires_at_ms: now.saturating_add(a.ttl.as_millis() as u64),
        nonce: rand::random(),
        terms: Terms {
            min_iops: a.min_iops,
            max_iops: a.max_iops,
            min_mib_s: a.min_mib_s,
            max_mib_s: a.max_mib_s,
            weight: a.weight,
            read_cost: a.read_cost,
        },
    };
    claim
        .terms
        .check()
        .map_err(|e| anyhow::anyhow!("{e} (docs/qos.md)"))?;
    println!("{}", claim.sign(&key).to_text());
    Ok(())
}

fn show(a: &ShowArgs) -> anyhow::Result<()> {
    let token = match &a.token_file {
        Some(p) => read_token(p)?,
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            Token::from_text(&s).context("token on standard input")?
        }
    };
    let c = token.claim_unverified()?;
    let rights = if c.rights.writable() { "rw" } else { "ro" };
    let t = c.terms;
    if a.json {
        let v = serde_json::json!({
            "node": c.node_id.0, "volume": c.volume_id.0, "device": c.device_id.0,
            "range_start": c.range_offset, "range_end": c.range_offset + c.range_length,
            "rights": rights, "epoch": c.epoch.0,
            "issued_at_ms": c.issued_at_ms, "expires_at_ms": c.expires_at_ms,
            "terms": {"min_iops": t.min_iops, "max_iops": t.max_iops, "min_mib_s": t.min_mib_s,
                      "max_mib_s": t.max_mib_s, "weight": t.weight(), "read_cost": t.read_cost()},
        });
        println!("{v}");
    } else {
        println!(
            "node      {}",
            if c.node_id.0 == 0 {
                "any".to_string()
            } else {
                c.node_id.to_string()
            }
        );
        println!("volume    {}", c.volume_id);
        println!("device    {}", c.device_id);
        println!(
            "range     {}..{} ({} bytes)",
            format_size(c.range_offset),
            format_size(c.range_offset + c.range_length),
            c.range_length
        );
        println!("rights    {rights}");
        println!("epoch     {}", c.epoch);
        println!("expires   {} ms since the Unix epoch", c.expires_at_ms);
        if !t.is_none() {
            let or_none = |x: u64| {
                if x == 0 {
                    "-".to_string()
                } else {
                    x.to_string()
                }
            };
            println!(
                "terms     promised {} IOPS {} MiB/s, capped {} IOPS {} MiB/s, weight {}, a read counts {}",
                t.min_iops,
                t.min_mib_s,
                or_none(t.max_iops.into()),
                or_none(t.max_mib_s.into()),
                t.weight(),
                t.read_cost()
            );
        }
        println!("(signature not checked: only a node with the trusted key can verify it)");
    }
    Ok(())
}
