//! `dasmesh nbd serve`: a volume as an NBD export (the work is in the `dasmesh-nbd` crate).

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use dasmesh_client::{default_host, MountOptions};
use dasmesh_nbd::{GatewayOptions, ListenAddr, PollMode, ReadaheadConfig, Threads};

/// NBD gateway commands.
#[derive(Subcommand)]
pub enum NbdCmd {
    /// Mount VOLUME and serve it as an NBD export until SIGTERM or SIGINT (then finish requests
    /// in flight, flush and unmount). Prints `listening ADDR` on stdout once clients can connect.
    Serve(ServeArgs),
}

/// `dasmesh nbd serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The volume.
    volume: String,
    /// `HOST:PORT` (port 0 picks a free one) or `unix:PATH`.
    #[arg(long, default_value = "127.0.0.1:10809")]
    listen: ListenAddr,
    /// Mount read-only and refuse writes (EPERM).
    #[arg(long)]
    read_only: bool,
    /// Host name recorded in the lease and usage.
    #[arg(long, default_value_t = default_host())]
    host: String,
    /// Lease length (renewed in the background); 0: the controller's default.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Connections per extent to its node.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Requests in flight per node connection.
    #[arg(long, default_value_t = 64)]
    queue_depth: usize,
    /// Sequential readahead: bytes fetched ahead of a stream of reads (0: off). Read-write
    /// exports only (a read-only export's volume may be written by another host).
    #[arg(long, default_value = "16M", value_parser = crate::ctl::size_arg)]
    readahead: u64,
    /// How to wait while requests are in flight: `interrupt` always sleeps in the kernel;
    /// `adaptive` keeps polling (yielding the CPU to any other runnable thread) while any
    /// request is in flight and sleeps when none is: faster when the disk's latency is the limit
    /// and cores are spare, slower when the CPU is the limit (tools/nbd/README.md).
    #[arg(long, value_enum, default_value_t = Poll::Interrupt)]
    poll: Poll,
    /// Memory for READ and WRITE data, all clients together (e.g. `256M`, at least `1M`). One
    /// connection holds at most a quarter of it, and the largest request accepted (the
    /// maximum block size advertised) is the largest power of two within that quarter, up to
    /// 32 MiB. A client whose requests would exceed its part waits (its requests are not read)
    /// until its replies drain (tools/nbd/README.md, "Memory").
    #[arg(long, default_value = "256M", value_parser = crate::ctl::size_arg)]
    max_buffer: u64,
    /// Reach nodes on this machine over loopback TCP instead of their same-host Unix socket.
    #[arg(long)]
    no_local_socket: bool,
    /// Stand by for another host's read-write lease on the volume: try to mount it every
    /// `--standby-poll`, and serve (printing `listening ADDR`) once that lease has ended: the
    /// host unmounted, or died and its lease expired. Takeover within the active host's lease
    /// TTL plus `--standby-poll` and a mount (docs/volumes.md, "A spare host").
    #[arg(long)]
    standby: bool,
    /// How often a standby tries to take the volume.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    standby_poll: Duration,
    /// Refuse to serve unless every node of the volume serves its data plane over mutual TLS
    /// (dasmesh-node --tls). Without it TLS is used with the nodes that serve it.
    #[arg(long)]
    tls: bool,
    /// Threads serving the connections. Default (or 0): one per CPU this process may use, so
    /// the connections of a multi-conn client and the requests of each run on several cores at
    /// once; with `--cpu` that is one. 1: a single thread, the main one (tools/nbd/README.md,
    /// "Threads").
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Run the gateway (every thread of it) on this CPU only (and so, unless `--threads` says
    /// otherwise, on one thread). On a host that also runs the node,
    /// give the CPU of the node's reactor (a node pins reactor N to the Nth CPU it may use) when
    /// that node polls in `interrupt` mode: each request then passes between the two without waking another core
    /// (tools/nbd/README.md, "Placement"). Default: wherever the scheduler puts it.
    #[arg(long, value_name = "CPU")]
    cpu: Option<usize>,
    /// Serve `/metrics` (Prometheus text format) on this address: connections, and per command
    /// requests, bytes, errors and latency. Port 0 picks one, printed as `metrics ADDR` after
    /// the `listening` line. Off by default.
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
}

/// Runs a subcommand.
pub fn run(cmd: NbdCmd, controller: &str) -> anyhow::Result<()> {
    let NbdCmd::Serve(a) = cmd;
    if let Some(cpu) = a.cpu {
        // Before the runtime exists: its threads inherit the main thread's CPU.
        pin(cpu)?;
    }
    // After the pin: the default counts the CPUs the process may use, one once pinned.
    let rt =
        dasmesh_nbd::runtime::build(Threads::from_count(a.threads)).context("start the runtime")?;
    let opts = GatewayOptions {
        listen: a.listen,
        read_only: a.read_only,
        mount: MountOptions {
            host: a.host,
            ttl: a.ttl,
            connections: a.connections,
            queue_depth: a.queue_depth,
            local_socket: !a.no_local_socket,
            cert: crate::ctl::cert(),
            require_tls: a.tls,
            ..Default::default()
        },
        readahead: ReadaheadConfig {
            window: a.readahead,
            ..Default::default()
        },
        poll: match a.poll {
            Poll::Adaptive => PollMode::Adaptive,
            Poll::Interrupt => PollMode::Interrupt,
        },
        max_buffer: a.max_buffer,
        standby: a.standby.then_some(a.standby_poll),
    };
    // Bound before the export listens, so that whoever waits for `listening` can scrape.
    let metrics = match a.metrics {
        Some(m) => {
            let l = rt
                .block_on(tokio::net::TcpListener::bind(m))
                .with_context(|| format!("--metrics {m}"))?;
            let at = l.local_addr()?;
            dasmesh_nbd::metrics::enable();
            rt.spawn(dasmesh_nbd::metrics::serve(l));
            Some(at)
        }
        None => None,
    };
    rt.block_on(dasmesh_nbd::serve_volume(
        controller,
        &a.volume,
        opts,
        |addr| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening {addr}");
            if let Some(at) = metrics {
                let _ = writeln!(out, "metrics {at}");
            }
            let _ = out.flush();
        },
        dasmesh_nbd::shutdown_signal(),
    ))?;
    Ok(())
}

/// Pins the calling thread, and so every thread it starts later, to `cpu`.
fn pin(cpu: usize) -> anyhow::Result<()> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let Some(&core) = ids.iter().find(|c| c.id == cpu) else {
        let list: Vec<String> = ids.iter().map(|c| c.id.to_string()).collect();
        anyhow::bail!(
            "--cpu {cpu}: not a CPU this process may run on (those are: {})",
            list.join(", ")
        );
    };
    anyhow::ensure!(
        core_affinity::set_for_current(core),
        "--cpu {cpu}: the kernel refused to pin the gateway to it"
    );
    Ok(())
}

/// `--poll` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Poll {
    /// Poll while requests are in flight, sleep when idle.
    Adaptive,
    /// Always sleep in the kernel (default).
    Interrupt,
}
