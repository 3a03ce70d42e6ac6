//! `dasmesh volume cp|search|zero`: host commands that mount a volume through the controller and
//! do their I/O straight at the nodes with the client's `Volume` handle. Every one ends its lease
//! before it returns, also when it fails or is interrupted with Ctrl-C.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use dasmesh_api::{v1, Controllers};
use dasmesh_client::{default_host, Access, MountOptions, Volume};
use dasmesh_wire::units::{format_size, parse_size};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinSet;

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// Bytes per request of `cp`.
const CHUNK: u64 = 1 << 20;
/// Requests of `cp` in flight at once.
const PIPELINE: usize = 8;
/// Bytes per WRITE_ZEROES of `zero` (the node zeroes a range of any length in one request; the
/// chunks only give the progress bar something to show).
const ZERO_CHUNK: u64 = 16 << 20;

/// How to mount, shared by the host commands.
#[derive(Args, Clone, Debug)]
pub struct MountArgs {
    /// Who mounts (recorded in the lease and the usage).
    #[arg(long, default_value_t = default_host())]
    pub host: String,
    /// Lease length; renewed in the background while the command runs.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Refuse to mount unless every node of the volume serves its data plane over mutual TLS
    /// (dasmesh-node --tls). Without it TLS is used with the nodes that serve it.
    #[arg(long)]
    pub tls: bool,
}

impl Default for MountArgs {
    fn default() -> Self {
        Self {
            host: default_host(),
            ttl: Duration::from_secs(60),
            tls: false,
        }
    }
}

/// `dasmesh volume cp|search|zero`.
#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Copy a local file into a volume (`cp FILE NAME`) or a volume into a file (`cp NAME FILE`).
    ///
    /// Which way: an argument with a `/` is always the local file (volume names have none);
    /// otherwise, if FIRST is an existing local file it is uploaded into the volume SECOND, else
    /// FIRST is the volume, downloaded into the file SECOND (created or overwritten). When both
    /// exist as local files the command refuses: write the file as `./FILE`.
    ///
    /// An upload starts at the volume's first byte; a file larger than the volume is refused. The
    /// tail of a file whose size is not a multiple of the block size is padded with zeroes on the
    /// volume. The upload is flushed (durable) before the command ends. A download copies the
    /// whole volume, or its first --length bytes.
    Cp(CpArgs),
    /// Scan a volume for a pattern (on the nodes that hold it); print the volume offset of every
    /// match. Mounts read-only.
    Search(SearchArgs),
    /// Make a whole volume read back as zeroes (WRITE_ZEROES on every extent), then flush.
    Zero(ZeroArgs),
    /// Copy a mirror's data from a healthy copy onto its stale copies (their nodes must be up
    /// again), flush them, and mark them healthy: the volume is no longer degraded. Mounts
    /// read-write, so nobody else may hold the volume read-write meanwhile.
    Rebuild(ZeroArgs),
}

/// `dasmesh volume cp`.
#[derive(Args, Debug)]
pub struct CpArgs {
    /// FILE (upload) or volume NAME (download).
    pub first: String,
    /// Volume NAME (upload) or FILE (download).
    pub second: String,
    /// Download only the first SIZE bytes (default: the whole volume).
    #[arg(long, value_parser = size_arg)]
    pub length: Option<u64>,
    #[command(flatten)]
    pub mount: MountArgs,
}

/// `dasmesh volume search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// The volume.
    pub name: String,
    /// What to find: 1..=64 bytes of text, or of hex digits with --hex.
    pub pattern: String,
    /// PATTERN is hex digits (`de ad be ef` or `deadbeef`).
    #[arg(long)]
    pub hex: bool,
    /// Stop after this many matches.
    #[arg(long, default_value_t = 1000)]
    pub max_hits: u32,
    /// Where the scan starts (volume byte offset).
    #[arg(long, default_value = "0", value_parser = size_arg)]
    pub offset: u64,
    /// How many bytes to scan (default: to the end of the volume).
    #[arg(long, value_parser = size_arg)]
    pub length: Option<u64>,
    #[command(flatten)]
    pub mount: MountArgs,
}

/// `dasmesh volume zero`.
#[derive(Args, Debug)]
pub struct ZeroArgs {
    /// The volume.
    pub name: String,
    #[command(flatten)]
    pub mount: MountArgs,
}

/// Runs a host command against the controllers `ctl`.
pub async fn exec(ctl: &Controllers, json_out: bool, cmd: HostCmd) -> anyhow::Result<()> {
    match cmd {
        HostCmd::Cp(a) => {
            let t = match direction(ctl, &a.first, &a.second).await? {
                Direction::Upload => {
                    if a.length.is_some() {
                        bail!("--length only applies to a download (cp NAME FILE)");
                    }
                    let file = PathBuf::from(&a.first);
                    upload(ctl, &file, &a.second, &a.mount, !json_out).await?
                }
                Direction::Download => {
                    let file = PathBuf::from(&a.second);
                    download(ctl, &a.first, &file, a.length, &a.mount, !json_out).await?
                }
            };
            t.print(json_out);
        }
        HostCmd::Search(a) => {
            let pattern = if a.hex {
                parse_hex(&a.pattern)?
            } else {
                a.pattern.clone().into_bytes()
            };
            let r = search(
                ctl, &a.name, &pattern, a.offset, a.length, a.max_hits, &a.mount,
            )
            .await?;
            if json_out {
                println!("{}", json!({"hits": r.hits, "truncated": r.truncated}));
            } else {
                for h in &r.hits {
                    println!("{h}");
                }
                if r.truncated {
                    eprintln!("(stopped at {} hits; more matches follow)", a.max_hits);
                }
            }
        }
        HostCmd::Rebuild(a) => {
            let t0 = Instant::now();
            let progress = !json_out;
            let (copies, copied, size) =
                with_volume(ctl, &a.name, Access::ReadWrite, &a.mount, |v| async move {
                    let bar = bar(v.size(), progress);
                    let mut copied = 0;
                    let r = v
                        .rebuild(|done, total| {
                            bar.set_length(total);
                            bar.set_position(done);
                            copied = done;
                        })
                        .await
                        .map_err(|e| anyhow!("rebuilding volume {}: {e}", v.name()));
                    bar.finish_and_clear();
                    r.map(|c| (c, copied, v.size()))
                })
                .await?;
            let secs = t0.elapsed().as_secs_f64();
            if json_out {
                println!(
                    "{}",
                    json!({"rebuilt": a.name, "copies": copies, "seconds": secs,
                           "copied_bytes": copied, "size_bytes": size})
                );
            } else if copies.is_empty() {
                println!("volume {}: no stale copy, nothing to rebuild", a.name);
            } else {
                println!(
                    "rebuilt copies {copies:?} of volume {} in {secs:.2} s, copying {} of {} \
                     ({:.1}%): they serve reads again",
                    a.name,
                    format_size(copied),
                    format_size(size),
                    copied as f64 * 100.0 / size.max(1) as f64
                );
            }
        }
        HostCmd::Zero(a) => {
            let t0 = Instant::now();
            let size = zero(ctl, &a.name, &a.mount, !json_out).await?;
            let secs = t0.elapsed().as_secs_f64();
            if json_out {
                println!(
                    "{}",
                    json!({"zeroed": a.name, "bytes": size, "seconds": secs})
                );
            } else {
                println!(
                    "zeroed volume {} ({}, {size} bytes) in {secs:.2} s",
                    a.name,
                    format_size(size)
                );
            }
        }
    }
    Ok(())
}

/// Which way `cp` copies.
#[derive(Debug, PartialEq, Eq)]
enum Direction {
    Upload,
    Download,
}

/// The rule of `cp`'s help, from what exists locally; `None` when both arguments are local files.
fn direction_of(first: &str, second: &str, exists: impl Fn(&str) -> bool) -> Option<Direction> {
    match (first.contains('/'), second.contains('/')) {
        (true, false) => return Some(Direction::Upload),
        (false, true) => return Some(Direction::Download),
        _ => {}
    }
    match (exists(first), exists(second)) {
        (true, true) => None,
        (true, false) => Some(Direction::Upload),
        (false, _) => Some(Direction::Download),
    }
}

async fn direction(ctl: &Controllers, first: &str, second: &str) -> anyhow::Result<Direction> {
    let d = direction_of(first, second, |p| Path::new(p).exists()).ok_or_else(|| {
        anyhow!(
            "ambiguous: {first} and {second} are both local files; write the local one as \
             ./{first} (upload into volume {second}) or ./{second} (download volume {first} into it)"
        )
    })?;
    // A download whose "volume" is neither a volume nor a local file is most likely a typo'd path.
    if d == Direction::Download && !first.contains('/') {
        if let Err(e) = volume_info(ctl, first).await {
            if e.to_string().starts_with("unknown volume") {
                bail!("{first}: no such local file, and no volume of that name");
            }
            return Err(e);
        }
    }
    Ok(d)
}

/// The volume as the controller describes it; one-line errors for an unknown volume and an
/// unreachable controller.
pub async fn volume_info(ctl: &Controllers, name: &str) -> anyhow::Result<v1::Volume> {
    match v1::volumes_client::VolumesClient::new(ctl.clone())
        .get(v1::GetVolumeRequest { name: name.into() })
        .await
    {
        Ok(v) => Ok(v.into_inner()),
        Err(s) if s.code() == tonic::Code::NotFound => Err(anyhow!("unknown volume {name:?}")),
        Err(s) => Err(crate::ctl::status(s)),
    }
}

/// Mounts `name`, runs `body` on it and always ends the lease: after success, after an error,
/// and on Ctrl-C (the body is dropped first; the client's requests are cancel-safe).
async fn with_volume<T, F, Fut>(
    ctl: &Controllers,
    name: &str,
    access: Access,
    m: &MountArgs,
    body: F,
) -> anyhow::Result<T>
where
    F: FnOnce(Volume) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let opts = MountOptions {
        host: m.host.clone(),
        access,
        ttl: m.ttl,
        cert: crate::ctl::cert(),
        require_tls: m.tls,
        ..Default::default()
    };
    let how = match access {
        Access::ReadOnly => "read-only",
        Access::ReadWrite => "read-write",
    };
    let v = Volume::mount_on(ctl.clone(), name, opts)
        .await
        .map_err(|e| anyhow!("cannot mount volume {name} {how}: {e}"))?;
    let r = tokio::select! {
        r = body(v.clone()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let ended = v
        .unmount()
        .await
        .map_err(|e| anyhow!("unmounting volume {name}: {e}"));
    let out = r?;
    ended?;
    Ok(out)
}

/// One finished copy: what, how much, how fast.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Where from (a path or `volume NAME`).
    pub from: String,
    /// Where to.
    pub to: String,
    /// Bytes copied (of the file; the padding is not counted).
    pub bytes: u64,
    /// Wall time, mount to unmount.
    pub seconds: f64,
}

impl Transfer {
    /// MiB per second.
    pub fn mib_s(&self) -> f64 {
        self.bytes as f64 / (1u64 << 20) as f64 / self.seconds.max(1e-9)
    }

    /// The final line (JSON with `--json`).
    pub fn print(&self, json_out: bool) {
        if json_out {
            println!(
                "{}",
                json!({"from": self.from, "to": self.to, "bytes": self.bytes,
                    "seconds": self.seconds, "mib_s": self.mib_s()})
            );
        } else {
            println!(
                "copied {} ({} bytes) from {} to {} in {:.2} s ({:.1} MiB/s)",
                mib(self.bytes),
                self.bytes,
                self.from,
                self.to,
                self.seconds,
                self.mib_s()
            );
        }
    }
}

/// `4.8 MiB`.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn bar(total: u64, show: bool) -> indicatif::ProgressBar {
    if show {
        crate::io::progress(total, false)
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// Copies `file` into volume `name` from its first byte, flushes, unmounts.
pub async fn upload(
    ctl: &Controllers,
    file: &Path,
    name: &str,
    m: &MountArgs,
    progress: bool,
) -> anyhow::Result<Transfer> {
    let mut f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let total = f.metadata().await?.len();
    let info = volume_info(ctl, name).await?;
    // Checked before the lease is taken: a refusal leaves nothing behind.
    if total > info.size_bytes {
        bail!(
            "{} is {total} bytes ({}), larger than volume {name} ({} bytes, {})",
            file.display(),
            mib(total),
            info.size_bytes,
            mib(info.size_bytes)
        );
    }
    let t0 = Instant::now();
    with_volume(ctl, name, Access::ReadWrite, m, |v| async move {
        let bs = u64::from(v.block_size());
        let bar = bar(total, progress);
        let mut set = JoinSet::new();
        let mut done = 0u64;
        while done < total {
            if set.len() >= PIPELINE {
                set.join_next().await.expect("non-empty")??;
            }
            let n = CHUNK.min(total - done);
            // The tail is padded with zeroes to a whole block.
            let mut buf = vec![0u8; n.next_multiple_of(bs) as usize];
            f.read_exact(&mut buf[..n as usize])
                .await
                .with_context(|| format!("reading {} at byte {done}", file.display()))?;
            let (v, bar, at) = (v.clone(), bar.clone(), done);
            set.spawn(async move {
                v.write(at, &buf, false)
                    .await
                    .map_err(|e| anyhow!("writing volume bytes {at}..{}: {e}", at + n))?;
                bar.inc(n);
                Ok::<_, anyhow::Error>(())
            });
            done += n;
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        v.flush().await.map_err(|e| anyhow!("flushing: {e}"))?;
        bar.finish_and_clear();
        Ok(())
    })
    .await?;
    Ok(Transfer {
        from: file.display().to_string(),
        to: format!("volume {name}"),
        bytes: total,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Copies the first `length` bytes (default all) of volume `name` into `file`.
pub async fn download(
    ctl: &Controllers,
    name: &str,
    file: &Path,
    length: Option<u64>,
    m: &MountArgs,
    progress: bool,
) -> anyhow::Result<Transfer> {
    let info = volume_info(ctl, name).await?;
    let total = length.unwrap_or(info.size_bytes);
    if total > info.size_bytes {
        bail!(
            "--length {total} is more than volume {name} holds ({} bytes, {})",
            info.size_bytes,
            mib(info.size_bytes)
        );
    }
    let mut out = tokio::fs::File::create(file)
        .await
        .with_context(|| format!("creating {}", file.display()))?;
    let t0 = Instant::now();
    with_volume(ctl, name, Access::ReadOnly, m, |v| async move {
        let bs = u64::from(v.block_size());
        let bar = bar(total, progress);
        // PIPELINE reads in flight, written out in order; the last one is read to a whole block
        // and cut to --length.
        let mut inflight = VecDeque::new();
        let mut next = 0u64;
        while next < total || !inflight.is_empty() {
            while next < total && inflight.len() < PIPELINE {
                let n = CHUNK.min(total - next);
                let (v, at) = (v.clone(), next);
                inflight.push_back(tokio::spawn(async move {
                    let mut d = v
                        .read(at, n.next_multiple_of(bs) as usize)
                        .await
                        .map_err(|e| anyhow!("reading volume bytes {at}..{}: {e}", at + n))?;
                    d.truncate(n as usize);
                    Ok::<_, anyhow::Error>(d)
                }));
                next += n;
            }
            let d = inflight.pop_front().expect("non-empty").await??;
            out.write_all(&d)
                .await
                .with_context(|| format!("writing {}", file.display()))?;
            bar.inc(d.len() as u64);
        }
        out.flush()
            .await
            .with_context(|| format!("writing {}", file.display()))?;
        bar.finish_and_clear();
        Ok(())
    })
    .await?;
    Ok(Transfer {
        from: format!("volume {name}"),
        to: file.display().to_string(),
        bytes: total,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Volume offsets where `pattern` starts within `[offset, offset+length)` (default: to the end).
/// The range need not be block-aligned: the scan covers the blocks around it and keeps the
/// matches wholly inside.
pub async fn search(
    ctl: &Controllers,
    name: &str,
    pattern: &[u8],
    offset: u64,
    length: Option<u64>,
    max_hits: u32,
    m: &MountArgs,
) -> anyhow::Result<dasmesh_client::SearchResult> {
    if pattern.is_empty() || pattern.len() > dasmesh_wire::SEARCH_PATTERN_MAX {
        bail!(
            "the pattern must be 1..={} bytes, got {}",
            dasmesh_wire::SEARCH_PATTERN_MAX,
            pattern.len()
        );
    }
    let info = volume_info(ctl, name).await?;
    let size = info.size_bytes;
    let end = match length {
        Some(l) => offset.checked_add(l).filter(|&e| e <= size),
        None => (offset <= size).then_some(size),
    }
    .ok_or_else(|| anyhow!("the range is past the end of volume {name} ({size} bytes)"))?;
    with_volume(ctl, name, Access::ReadOnly, m, |v| async move {
        let bs = u64::from(v.block_size());
        let lo = offset / bs * bs;
        let hi = end.next_multiple_of(bs).min(size);
        if hi <= lo {
            return Ok(dasmesh_client::SearchResult {
                hits: Vec::new(),
                truncated: false,
            });
        }
        // Matches in the widened edges are asked for too, then dropped.
        let extra = u32::try_from((offset - lo) + (hi - end)).unwrap_or(u32::MAX);
        let plen = pattern.len() as u64;
        let mut r = v
            .search(lo, hi - lo, pattern, max_hits.saturating_add(extra))
            .await
            .map_err(|e| anyhow!("searching volume {name}: {e}"))?;
        r.hits.retain(|&h| h >= offset && h + plen <= end);
        if r.hits.len() > max_hits as usize {
            r.hits.truncate(max_hits as usize);
            r.truncated = true;
        }
        Ok(r)
    })
    .await
}

/// Zeroes the whole of volume `name`; returns its size.
pub async fn zero(
    ctl: &Controllers,
    name: &str,
    m: &MountArgs,
    progress: bool,
) -> anyhow::Result<u64> {
    volume_info(ctl, name).await?;
    with_volume(ctl, name, Access::ReadWrite, m, |v| async move {
        let size = v.size();
        let bar = bar(size, progress);
        let mut set = JoinSet::new();
        let mut at = 0u64;
        while at < size {
            if set.len() >= 4 {
                set.join_next().await.expect("non-empty")??;
            }
            let n = ZERO_CHUNK.min(size - at);
            let (v, bar, start) = (v.clone(), bar.clone(), at);
            set.spawn(async move {
                v.write_zeroes(start, n, false)
                    .await
                    .map_err(|e| anyhow!("zeroing volume bytes {start}..{}: {e}", start + n))?;
                bar.inc(n);
                Ok::<_, anyhow::Error>(())
            });
            at += n;
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        v.flush().await.map_err(|e| anyhow!("flushing: {e}"))?;
        bar.finish_and_clear();
        Ok(size)
    })
    .await
}

/// `dead beef`, `DEADBEEF` -> bytes.
fn parse_hex(s: &str) -> anyhow::Result<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        bail!("--hex pattern {s:?}: an odd number of hex digits");
    }
    digits
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|t| u8::from_str_radix(t, 16).ok())
                .ok_or_else(|| {
                    anyhow!(
                        "--hex pattern {s:?}: {:?} is not a hex byte",
                        String::from_utf8_lossy(p)
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_direction_follows_the_documented_rule() {
        let local = |p: &str| ["data.bin", "db"].contains(&p);
        assert_eq!(
            direction_of("data.bin", "vol", local),
            Some(Direction::Upload)
        );
        assert_eq!(
            direction_of("vol", "out.bin", local),
            Some(Direction::Download)
        );
        assert_eq!(
            direction_of("vol", "data.bin", local),
            Some(Direction::Download)
        );
        assert_eq!(direction_of("db", "data.bin", local), None);
        assert_eq!(
            direction_of("db", "./data.bin", local),
            Some(Direction::Download)
        );
        assert_eq!(
            direction_of("./db", "data.bin", local),
            Some(Direction::Upload)
        );
        assert_eq!(
            direction_of("/tmp/x", "vol", local),
            Some(Direction::Upload)
        );
        // Neither exists: a download, whose missing volume gets its own message.
        assert_eq!(
            direction_of("nope", "out", local),
            Some(Direction::Download)
        );
    }

    #[test]
    fn hex_patterns_parse_or_say_why() {
        assert_eq!(parse_hex("de ad BE ef").unwrap(), [0xde, 0xad, 0xbe, 0xef]);
        assert!(parse_hex("abc").unwrap_err().to_string().contains("odd"));
        assert!(parse_hex("zz").unwrap_err().to_string().contains("\"zz\""));
    }
}
