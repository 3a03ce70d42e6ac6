//! Node configuration: command-line flags, backend specs and polling modes.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use dasmesh_wire::units::parse_size;
use dasmesh_wire::NodeId;

/// How a reactor waits for completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PollMode {
    /// Spin while work arrives, block in the kernel after a short idle window (default).
    Adaptive,
    /// Spin always (a dedicated core per reactor).
    Busy,
    /// Always block in the kernel until a completion arrives.
    Interrupt,
}

/// The owner's part of every device, never lent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// The first N bytes.
    Head(u64),
    /// Everything from this byte on.
    Tail(u64),
}

impl Reserve {
    /// The lendable `(start, length)` of a device of `size` bytes, aligned to 4 KiB.
    pub fn lendable(self, size: u64) -> (u64, u64) {
        match self {
            Reserve::Head(n) => {
                let start = (n.div_ceil(4096) * 4096).min(size);
                // Whole 4 KiB blocks only: the controller refuses a report that lends a
                // partial block at the end of a device.
                (start, (size - start) / 4096 * 4096)
            }
            Reserve::Tail(from) => (0, (from.min(size) / 4096) * 4096),
        }
    }

    /// The owner's reserved `(start, length)` of a device of `size` bytes: everything
    /// [`Reserve::lendable`] leaves out.
    pub fn reserved(self, size: u64) -> (u64, u64) {
        let (start, len) = self.lendable(size);
        match self {
            Reserve::Head(_) => (0, start),
            Reserve::Tail(_) => (start + len, size - (start + len)),
        }
    }
}

impl FromStr for Reserve {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            |why: String| format!("--reserve {s:?}: {why} (expected SIZE, 0..END or START..)");
        match s.split_once("..") {
            None => parse_size(s)
                .map(Reserve::Head)
                .map_err(|e| bad(e.to_string())),
            Some((a, "")) => parse_size(a)
                .map(Reserve::Tail)
                .map_err(|e| bad(e.to_string())),
            Some((a, b)) => {
                let start = parse_size(a).map_err(|e| bad(e.to_string()))?;
                let end = parse_size(b).map_err(|e| bad(e.to_string()))?;
                if start != 0 {
                    return Err(bad("a reserved range must start at 0 or run to the end of the device, so that one lendable area remains".into()));
                }
                Ok(Reserve::Head(end))
            }
        }
    }
}

/// One `--backend` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendSpec {
    /// A raw block device, opened O_DIRECT.
    Device(PathBuf),
    /// A file opened O_DIRECT, created (sparse) with `size` bytes if absent.
    File(PathBuf, Option<u64>),
    /// Anonymous memory of this many bytes (tests, network-path benchmarks).
    Memory(u64),
}

/// A backend spec that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid backend {spec:?}: {why} (expected device:/dev/X, file:PATH[:SIZE] or memory:SIZE)"
)]
pub struct BackendSpecError {
    spec: String,
    why: String,
}

impl FromStr for BackendSpec {
    type Err = BackendSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| BackendSpecError {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let (kind, rest) = s.split_once(':').ok_or_else(|| err("missing kind"))?;
        match kind {
            "device" if !rest.is_empty() => Ok(BackendSpec::Device(rest.into())),
            "file" if !rest.is_empty() => {
                // A trailing `:SIZE` is a size only if it parses as one; paths may contain ':'.
                if let Some((path, size)) = rest.rsplit_once(':') {
                    if let Ok(bytes) = parse_size(size) {
                        if bytes == 0 {
                            return Err(err("size must be > 0"));
                        }
                        return Ok(BackendSpec::File(path.into(), Some(bytes)));
                    }
                }
                Ok(BackendSpec::File(rest.into(), None))
            }
            "memory" => {
                let bytes = parse_size(rest).map_err(|e| err(&e.to_string()))?;
                if bytes == 0 {
                    return Err(err("size must be > 0"));
                }
                Ok(BackendSpec::Memory(bytes))
            }
            "device" | "file" => Err(err("missing path")),
            _ => Err(err("unknown kind")),
        }
    }
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// `dasmesh-node`: serves raw block devices (or files, or memory) over the dasmesh protocol.
#[derive(Clone, Debug, Parser)]
#[command(name = "dasmesh-node", version, about)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// A backend to serve: device:/dev/X, file:PATH[:SIZE], memory:SIZE. Repeat for several;
    /// devices are numbered 0, 1, ... in this order.
    #[arg(long = "backend", required = true)]
    pub backends: Vec<BackendSpec>,
    /// The control plane's public key (64 hex digits), used to verify every token.
    #[arg(long)]
    pub trust_key: Option<PathBuf>,
    /// The controller to register with (e.g. http://127.0.0.1:7600), or a comma-separated list
    /// of them (the active one is followed): the node gets its id and the token-signing key from
    /// it, reports its devices and heartbeats.
    #[arg(long)]
    pub controller: Option<String>,
    /// This node's certificate directory (`dasmesh cert issue --role node`): the controllers
    /// are reached over mutual TLS (`https://` URLs), as the node its certificate names.
    #[arg(long, env = "DASMESH_CERT")]
    pub cert: Option<PathBuf>,
    /// Serve the data plane over mutual TLS with the certificate of --cert (which then must be
    /// a node's): every client must show a certificate of the same CA. Plaintext stays the
    /// default, for a trusted storage network (docs/security.md); same-host clients keep the
    /// Unix socket, which is not on the network.
    #[arg(long)]
    pub tls: bool,
    /// Threads that encrypt and relay TLS connections (with --tls).
    #[arg(long, default_value_t = 1)]
    pub tls_threads: usize,
    /// The data-plane address hosts should use (default: the bound --listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Do not listen for same-host clients on the abstract Unix socket named after the
    /// advertised address (`@dasmesh-node/ADDR`); they then use TCP like everyone else.
    #[arg(long)]
    pub no_local_socket: bool,
    /// Where the node keeps its state across restarts: its id (node-id, with --controller) and
    /// the highest fencing epoch seen per device range (fences).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// What of every device the owner keeps (never lent): SIZE (the first SIZE bytes),
    /// 0..END (the same), or START.. (everything from START to the end).
    #[arg(long, default_value = "0")]
    pub reserve: Reserve,
    /// Failure domain label reported to the controller (rack, room).
    #[arg(long, default_value = "")]
    pub failure_domain: String,
    /// This node's id; tokens for another node (other than 0, "any") are refused.
    #[arg(long, default_value_t = 0)]
    pub node_id: u64,
    /// Number of reactor threads, each pinned to its own core.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Do not pin reactors to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// How reactors wait for work [default: adaptive; interrupt with --tls, whose threads
    /// would otherwise compete with spinning reactors for the same cores].
    #[arg(long, value_enum)]
    pub poll: Option<PollMode>,
    /// How long an adaptive reactor keeps spinning after its last completion.
    #[arg(long, default_value = "500us", value_parser = humantime::parse_duration)]
    pub spin: Duration,
    /// Largest READ/WRITE a request may carry.
    #[arg(long, default_value = "1M", value_parser = size_arg)]
    pub max_io: u64,
    /// Requests kept in flight per connection (more wait in the socket).
    #[arg(long, default_value_t = 256)]
    pub max_inflight: u32,
    /// Open only tokens bound to their holder (claim format 2, with a proof of holding in the
    /// hello): bearer tokens are refused with `NotHolder`. Leases taken by the host library
    /// are bound; tokens minted by hand (`dasmesh token mint`) and `dasmesh lease mount`'s
    /// are bearer tokens.
    #[arg(long)]
    pub require_holder: bool,
    /// Every device's 4 KiB random IOPS (read and write) as the controller is to count them,
    /// instead of the probe at first start (docs/qos.md).
    #[arg(long)]
    pub device_iops: Option<u64>,
    /// Every device's sequential MiB/s, instead of the probe at first start.
    #[arg(long)]
    pub device_mib_s: Option<u64>,
    /// Measure the devices again at this start (the figures are kept in --state-dir).
    #[arg(long)]
    pub reprobe: bool,
    /// Serve every lease as fast as it asks, ignoring the service terms in tokens (for
    /// measuring what the scheduler costs; docs/qos.md).
    #[arg(long)]
    pub no_qos: bool,
    /// Serve `/metrics` (Prometheus text format) on this address; port 0 picks one, printed as
    /// `metrics ADDR` after the `listening` line. Off by default: reactors count nothing.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// How often the scheduler looks at what each lease did and sets their rates (1ms..=1s).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub qos_period: Duration,
    /// Reads of 1 MiB a rebuild keeps in flight to the node it copies from.
    #[arg(long, default_value_t = 4)]
    pub rebuild_depth: usize,
    /// The most MiB/s a rebuild copies (0: as fast as it can; the rebuild already yields every
    /// region a host write is in flight in).
    #[arg(long, default_value_t = 0)]
    pub rebuild_mib_s: u64,
    /// Test builds only (feature `fault-injection`): inject the device faults listed in this
    /// file, read again whenever it changes (src/fault.rs).
    #[cfg(feature = "fault-injection")]
    #[arg(long)]
    pub fault_file: Option<PathBuf>,
    /// Largest number of hits one SEARCH may ask for.
    #[arg(long, default_value_t = 65536)]
    pub max_search_hits: u32,
    /// Submit device I/O in one batch per loop instead of each request at once (fewer system
    /// calls, but slower on the virtio disks measured so far).
    #[arg(long)]
    pub batch_submit: bool,
    /// How long a clean shutdown waits for in-flight work before closing connections anyway.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// A connection that has not completed its handshake this long after it was accepted is
    /// closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// A connection that has sent part of a frame (a request header, a WRITE payload) and then
    /// nothing more for this long is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub payload_timeout: Duration,
    /// A connection whose replies the client has taken none of for this long (its socket's
    /// send buffer full) is closed, giving back the buffers they hold; 2 s while other
    /// requests wait for buffers.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub send_timeout: Duration,
    /// Arena buffer bytes one connection may hold at once (its requests' slots, including READ
    /// replies not yet sent); past it the connection is not read until its slots come back.
    #[arg(long, default_value = "16M", value_parser = size_arg)]
    pub conn_slot_budget: u64,
    /// Reply payload bytes one connection may have queued and not yet sent; past it the
    /// connection is not read until its replies drain.
    #[arg(long, default_value = "8M", value_parser = size_arg)]
    pub conn_send_budget: u64,
    /// Test only: every FLUSH, DISCARD and WRITE_ZEROES (and the sync after a FUA zeroing) takes
    /// this much longer in the backend, as a slow device would.
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    pub fault_slow_device_ops: Option<Duration>,
}

impl Config {
    /// The node id as a newtype.
    pub fn node(&self) -> NodeId {
        NodeId(self.node_id)
    }

    /// How reactors wait for work: `--poll`, else adaptive (interrupt with `--tls`: measured
    /// on a shared core, an adaptive reactor's spinning cut the TLS node's 4k reads to 0.3x).
    pub fn poll_mode(&self) -> PollMode {
        self.poll.unwrap_or(if self.tls {
            PollMode::Interrupt
        } else {
            PollMode::Adaptive
        })
    }

    /// Checks values clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.cores == 0 {
            return Err("--cores must be at least 1".into());
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(1)).contains(&self.qos_period) {
            return Err(format!(
                "--qos-period {:?} is not in 1ms..=1s",
                self.qos_period
            ));
        }
        if self.tls && self.cert.is_none() {
            return Err("--tls needs the node's certificate: --cert DIR (or DASMESH_CERT)".into());
        }
        if self.tls && self.no_local_socket {
            return Err(
                "--tls relays to the reactors over the same-host socket: drop --no-local-socket"
                    .into(),
            );
        }
        if self.rebuild_depth == 0 || self.rebuild_depth > 256 {
            return Err(format!(
                "--rebuild-depth {} must be 1..=256",
                self.rebuild_depth
            ));
        }
        if self.tls_threads == 0 || self.tls_threads > 256 {
            return Err("--tls-threads must be in 1..=256".into());
        }
        if !(4096..=(16 << 20)).contains(&self.max_io) || !self.max_io.is_power_of_two() {
            return Err(format!(
                "--max-io {} must be a power of two between 4k and 16M",
                self.max_io
            ));
        }
        if self.max_inflight == 0 || self.max_inflight > 4096 {
            return Err(format!(
                "--max-inflight {} must be in 1..=4096",
                self.max_inflight
            ));
        }
        if self.handshake_timeout.is_zero()
            || self.payload_timeout.is_zero()
            || self.send_timeout.is_zero()
        {
            return Err(
                "--handshake-timeout, --payload-timeout and --send-timeout must be above zero"
                    .into(),
            );
        }
        if self.conn_slot_budget < 4096 || self.conn_send_budget < 4096 {
            return Err(format!(
                "--conn-slot-budget {} and --conn-send-budget {} must be at least 4k",
                self.conn_slot_budget, self.conn_send_budget
            ));
        }
        if self.max_search_hits == 0 {
            return Err("--max-search-hits must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations() {
        let g = 1u64 << 30;
        assert_eq!(
            "1M".parse::<Reserve>().unwrap().lendable(g),
            (1 << 20, g - (1 << 20))
        );
        assert_eq!("0..1M".parse::<Reserve>().unwrap(), Reserve::Head(1 << 20));
        assert_eq!(
            "512M..".parse::<Reserve>().unwrap().lendable(g),
            (0, 512 << 20)
        );
        assert_eq!(
            "100".parse::<Reserve>().unwrap().lendable(g).0,
            4096,
            "rounded up to a block"
        );
        assert_eq!("2G".parse::<Reserve>().unwrap().lendable(g), (g, 0));
        assert_eq!("1M".parse::<Reserve>().unwrap().reserved(g), (0, 1 << 20));
        assert_eq!(
            "512M..".parse::<Reserve>().unwrap().reserved(g),
            (512 << 20, 512 << 20)
        );
        assert_eq!(Reserve::Head(0).reserved(g), (0, 0));
        assert_eq!(
            Reserve::Head(4096).lendable(g + 1000),
            (4096, g - 4096),
            "a partial block at the end is not lent"
        );
        assert!("1M..2M"
            .parse::<Reserve>()
            .unwrap_err()
            .contains("start at 0"));
        assert!("x".parse::<Reserve>().is_err());
    }

    #[test]
    fn backend_specs() {
        assert_eq!(
            "device:/dev/loop0".parse::<BackendSpec>().unwrap(),
            BackendSpec::Device("/dev/loop0".into())
        );
        assert_eq!(
            "file:/tmp/a.img:2G".parse::<BackendSpec>().unwrap(),
            BackendSpec::File("/tmp/a.img".into(), Some(2 << 30))
        );
        assert_eq!(
            "file:/tmp/a:b.img".parse::<BackendSpec>().unwrap(),
            BackendSpec::File("/tmp/a:b.img".into(), None)
        );
        assert_eq!(
            "memory:64M".parse::<BackendSpec>().unwrap(),
            BackendSpec::Memory(64 << 20)
        );
        for bad in [
            "memory:0", "memory:x", "disk:/x", "file:", "device:", "nothing",
        ] {
            assert!(bad.parse::<BackendSpec>().is_err(), "{bad}");
        }
    }
}
