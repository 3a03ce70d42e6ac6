//! `dasmesh io ...`: reads, writes, searches and flushes straight at a node with a token, and a
//! quick queue-depth load loop (`io bench`) for checking a node's speed by hand.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use dasmesh_client::{ConnectOptions, Connection, Error as ClientError, NodeSession};
use dasmesh_wire::DeviceId;
use rand::{Rng as _, SeedableRng as _};
use tokio::task::JoinSet;

use crate::ctl::size_arg;
use crate::keys::read_token;

/// Where to connect, shared by every `io` command.
#[derive(Args, Clone)]
pub struct Target {
    /// The node's address, e.g. 127.0.0.1:7700.
    #[arg(long)]
    node: String,
    /// File holding the token (one line of text, from `dasmesh token mint`).
    #[arg(long)]
    token_file: PathBuf,
    /// The device on the node.
    #[arg(long)]
    device: u32,
    /// Set from the global --json.
    #[arg(skip)]
    pub json: bool,
}

/// `dasmesh io ...`.
#[derive(Subcommand)]
pub enum IoCmd {
    /// Write a file's bytes at an offset.
    Write {
        #[command(flatten)]
        t: Target,
        /// Byte offset on the device (units allowed: 1M).
        #[arg(long, value_parser = size_arg)]
        offset: u64,
        /// The file to write; its length must be a multiple of the block size.
        #[arg(long)]
        input: PathBuf,
        /// Make each write durable before it is acknowledged.
        #[arg(long)]
        fua: bool,
    },
    /// Read bytes into a file (`-` for standard output).
    Read {
        #[command(flatten)]
        t: Target,
        /// Byte offset on the device.
        #[arg(long, value_parser = size_arg)]
        offset: u64,
        /// How many bytes.
        #[arg(long, value_parser = size_arg)]
        length: u64,
        /// Output file, or `-`.
        #[arg(long)]
        output: PathBuf,
    },
    /// Scan a range on the node for a pattern; print each hit's byte offset.
    Search {
        #[command(flatten)]
        t: Target,
        /// Byte offset on the device.
        #[arg(long, value_parser = size_arg)]
        offset: u64,
        /// How many bytes to scan.
        #[arg(long, value_parser = size_arg)]
        length: u64,
        /// The text to find (1..=64 bytes).
        #[arg(long)]
        pattern: String,
        /// Stop after this many hits.
        #[arg(long, default_value_t = 1000)]
        max_hits: u32,
    },
    /// Make every acknowledged write durable.
    Flush {
        #[command(flatten)]
        t: Target,
        /// Accepted for symmetry with the other commands; FLUSH covers the whole device.
        #[arg(long, value_parser = size_arg, default_value = "0")]
        offset: u64,
    },
    /// A quick load loop: random or sequential reads or writes at a queue depth.
    Bench(BenchArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Pattern {
    Randread,
    Randwrite,
    Read,
    Write,
}

/// `dasmesh io bench`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    t: Target,
    /// Workload.
    #[arg(long, value_enum, default_value = "randread")]
    rw: Pattern,
    /// Block size.
    #[arg(long, default_value = "4k", value_parser = size_arg)]
    bs: u64,
    /// Requests in flight in total.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Connections (the queue depth is spread over them).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Start of the region used.
    #[arg(long, default_value = "0", value_parser = size_arg)]
    offset: u64,
    /// Size of the region used (default: the whole lent range).
    #[arg(long, value_parser = size_arg)]
    size: Option<u64>,
    /// How long to run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    runtime: Duration,
}

impl IoCmd {
    fn target_mut(&mut self) -> &mut Target {
        match self {
            IoCmd::Write { t, .. }
            | IoCmd::Read { t, .. }
            | IoCmd::Search { t, .. }
            | IoCmd::Flush { t, .. } => t,
            IoCmd::Bench(b) => &mut b.t,
        }
    }
}

/// Runs an `io` subcommand.
pub fn run(mut cmd: IoCmd, json: bool) -> anyhow::Result<()> {
    cmd.target_mut().json = json;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            IoCmd::Write {
                t,
                offset,
                input,
                fua,
            } => write(&t, offset, &input, fua).await,
            IoCmd::Read {
                t,
                offset,
                length,
                output,
            } => read(&t, offset, length, &output).await,
            IoCmd::Search {
                t,
                offset,
                length,
                pattern,
                max_hits,
            } => search(&t, offset, length, &pattern, max_hits).await,
            IoCmd::Flush { t, .. } => {
                let c = connect(&t).await?;
                c.flush().await.map_err(refused)?;
                report(&t, "flushed", serde_json::json!({"flushed": true}));
                Ok(())
            }
            IoCmd::Bench(b) => bench(b).await,
        }
    })
}

/// A client error as a one-line message (it names the node's status where there is one).
fn refused(e: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

async fn connect(t: &Target) -> anyhow::Result<Connection> {
    let token = read_token(&t.token_file)?;
    Connection::connect(
        &t.node,
        DeviceId(t.device),
        &token,
        &ConnectOptions::default(),
    )
    .await
    .map_err(refused)
    .with_context(|| format!("connecting to {} device {}", t.node, t.device))
}

fn report(t: &Target, human: &str, json: serde_json::Value) {
    if t.json {
        println!("{json}");
    } else {
        println!("{human}");
    }
}

/// At most this many chunk requests in flight for `io read` / `io write`: enough to keep a node
/// busy, and it bounds the memory held to PIPELINE x max_io_size.
const PIPELINE: usize = 16;

/// A byte-count progress bar on stderr; indicatif draws nothing when stderr is not a terminal,
/// and `--json` runs stay silent.
pub(crate) fn progress(total: u64, json: bool) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "[{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("template"),
    );
    bar
}

async fn write(t: &Target, offset: u64, input: &PathBuf, fua: bool) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let mut file = tokio::fs::File::open(input)
        .await
        .with_context(|| format!("opening {}", input.display()))?;
    let total = file.metadata().await?.len();
    let c = connect(t).await?;
    let bs = u64::from(c.info().block_size);
    if total == 0 || !total.is_multiple_of(bs) {
        bail!(
            "{} is {total} bytes: the length must be a non-zero multiple of the block size {bs}",
            input.display(),
        );
    }
    // Streamed in chunks of the node's largest I/O, so a file of any size needs little memory.
    let chunk = u64::from(c.info().max_io_size).max(bs);
    let bar = progress(total, t.json);
    let mut set = JoinSet::new();
    let mut done = 0u64;
    while done < total {
        if set.len() >= PIPELINE {
            set.join_next().await.expect("non-empty")??;
        }
        let n = chunk.min(total - done);
        let mut buf = vec![0u8; n as usize];
        file.read_exact(&mut buf)
            .await
            .with_context(|| format!("reading {} at byte {done}", input.display()))?;
        let (c, bar, at) = (c.clone(), bar.clone(), offset + done);
        set.spawn(async move {
            c.write(at, &buf, fua).await.map_err(refused)?;
            bar.inc(n);
            Ok::<_, anyhow::Error>(())
        });
        done += n;
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    bar.finish_and_clear();
    report(
        t,
        &format!("wrote {total} bytes at offset {offset}"),
        serde_json::json!({"written": total, "offset": offset}),
    );
    Ok(())
}

async fn read(t: &Target, offset: u64, length: u64, output: &PathBuf) -> anyhow::Result<()> {
    use std::io::Write as _;
    let c = connect(t).await?;
    let chunk = u64::from(c.info().max_io_size).max(u64::from(c.info().block_size));
    let mut out: Box<dyn std::io::Write> = if output.as_os_str() == "-" {
        Box::new(crate::out::Stdout)
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(output)
                .with_context(|| format!("creating {}", output.display()))?,
        ))
    };
    let bar = progress(length, t.json);
    // Keep PIPELINE reads in flight, write them out in order.
    let mut inflight = std::collections::VecDeque::new();
    let mut next = 0u64;
    while next < length || !inflight.is_empty() {
        while next < length && inflight.len() < PIPELINE {
            let (c, n) = (c.clone(), chunk.min(length - next));
            let at = offset + next;
            inflight.push_back(tokio::spawn(async move { c.read(at, n as usize).await }));
            next += n;
        }
        let bytes = inflight
            .pop_front()
            .expect("non-empty")
            .await?
            .map_err(refused)?;
        out.write_all(&bytes)
            .with_context(|| format!("writing {}", output.display()))?;
        bar.inc(bytes.len() as u64);
    }
    out.flush()
        .with_context(|| format!("writing {}", output.display()))?;
    bar.finish_and_clear();
    if output.as_os_str() != "-" {
        report(
            t,
            &format!(
                "read {length} bytes at offset {offset} into {}",
                output.display()
            ),
            serde_json::json!({"read": length, "offset": offset}),
        );
    }
    Ok(())
}

async fn search(
    t: &Target,
    offset: u64,
    length: u64,
    pattern: &str,
    max_hits: u32,
) -> anyhow::Result<()> {
    let c = connect(t).await?;
    let r = c
        .search(offset, length, pattern.as_bytes(), max_hits)
        .await
        .map_err(refused)?;
    if t.json {
        println!(
            "{}",
            serde_json::json!({"hits": r.hits, "truncated": r.truncated})
        );
    } else {
        for h in &r.hits {
            println!("{h}");
        }
        if r.truncated {
            eprintln!("(stopped at {max_hits} hits; more matches follow)");
        }
    }
    Ok(())
}

async fn bench(b: BenchArgs) -> anyhow::Result<()> {
    let token = read_token(&b.t.token_file)?;
    let opts = ConnectOptions {
        queue_depth: b.qd.div_ceil(b.connections.max(1)),
        ..Default::default()
    };
    let s = Arc::new(
        NodeSession::connect(
            &b.t.node,
            DeviceId(b.t.device),
            &token,
            b.connections,
            &opts,
        )
        .await
        .map_err(refused)?,
    );
    let info = *s.info();
    let start = b.offset.max(info.lent_offset);
    let size = b
        .size
        .unwrap_or(info.lent_offset + info.lent_length - start)
        .min(info.lent_offset + info.lent_length - start);
    let blocks = size / b.bs;
    if blocks == 0 {
        bail!("region of {size} bytes holds no {}-byte block", b.bs);
    }
    let deadline = Instant::now() + b.runtime;
    let began = Instant::now();
    let mut set = JoinSet::new();
    for w in 0..b.qd as u64 {
        let (s, bs, rw) = (Arc::clone(&s), b.bs, b.rw);
        set.spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            let mut rng = rand::rngs::StdRng::seed_from_u64(w);
            let data = vec![0x5Au8; bs as usize];
            let mut seq = w;
            while Instant::now() < deadline {
                let blk = match rw {
                    Pattern::Randread | Pattern::Randwrite => rng.gen_range(0..blocks),
                    _ => {
                        seq = (seq + b.qd as u64) % blocks;
                        seq
                    }
                };
                let at = start + blk * bs;
                let t0 = Instant::now();
                match rw {
                    Pattern::Randread | Pattern::Read => {
                        s.read(at, bs as usize).await?;
                    }
                    _ => s.write(at, &data, false).await?,
                }
                hist.record(t0.elapsed().as_nanos() as u64)
                    .expect("in range");
            }
            Ok::<_, ClientError>(hist)
        });
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    while let Some(r) = set.join_next().await {
        hist.add(r?.map_err(refused)?)?;
    }
    let secs = began.elapsed().as_secs_f64();
    let iops = hist.len() as f64 / secs;
    let mib_s = iops * b.bs as f64 / (1 << 20) as f64;
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    if b.t.json {
        println!(
            "{}",
            serde_json::json!({"iops": iops.round(), "mib_s": (mib_s * 10.0).round() / 10.0,
                "lat_us": {"p50": us(0.5), "p99": us(0.99), "max": hist.max() as f64 / 1000.0},
                "bs": b.bs, "qd": b.qd, "connections": b.connections})
        );
    } else {
        println!(
            "{:.0} IOPS  {:.1} MiB/s  p50 {:.1} us  p99 {:.1} us  max {:.1} us  ({} ops in {:.1} s)",
            iops,
            mib_s,
            us(0.5),
            us(0.99),
            hist.max() as f64 / 1000.0,
            hist.len(),
            secs
        );
    }
    Ok(())
}
