//! `dasmesh`: the operator and host command line.
#![forbid(unsafe_code)]

// Every `println!` and `print!` in this crate: std's, except that a closed pipe on stdout ends
// the process quietly instead of panicking (out.rs says why). Defined before the modules so
// their textual scope covers all of them.
macro_rules! println {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
#[allow(unused_macros)]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::out::text(format_args!($($arg)*))
    };
}

mod certs;
mod ctl;
mod demo;
mod io;
mod keys;
mod nbd;
mod out;
mod vol;

use clap::{Parser, Subcommand};

/// dasmesh: pooled direct-attached storage.
#[derive(Parser)]
#[command(name = "dasmesh", version, about)]
struct Cli {
    /// Machine-readable JSON output instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The controller's gRPC URL, or a comma-separated list of the controllers of a highly
    /// available control plane (http://a:7600,http://b:7600): every call goes to the active
    /// one, found and followed through failovers.
    #[arg(
        long,
        global = true,
        env = "DASMESH_CONTROLLER",
        default_value = "http://127.0.0.1:7600",
        value_name = "URL[,URL...]"
    )]
    controller: String,
    /// How long a call keeps trying the controllers while none serves it (no active one
    /// elected yet, or none reachable) before it fails.
    #[arg(
        long,
        global = true,
        env = "DASMESH_FAILOVER_WAIT",
        default_value = "15s",
        value_parser = humantime::parse_duration
    )]
    failover_wait: std::time::Duration,
    /// This identity's certificate directory (`dasmesh cert issue`): the controllers are then
    /// reached over mutual TLS, at https:// URLs.
    #[arg(long, global = true, env = "DASMESH_CERT", value_name = "DIR")]
    cert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The cluster's certificate authority.
    #[command(subcommand)]
    Ca(certs::CaCmd),
    /// Certificates: one per controller, node, host and operator.
    #[command(subcommand)]
    Cert(certs::CertCmd),
    /// Make a signing key pair (DIR/signing.key, DIR/public.key).
    Keygen(keys::KeygenArgs),
    /// Mint or show capability tokens.
    #[command(subcommand)]
    Token(keys::TokenCmd),
    /// Talk to a node directly with a token.
    #[command(subcommand)]
    Io(io::IoCmd),
    /// Controllers: which is active, which are standbys.
    #[command(subcommand)]
    Controller(ctl::ControllerCmd),
    /// Storage nodes.
    #[command(subcommand)]
    Node(ctl::NodeCmd),
    /// The pool: every device and its free space.
    Pool,
    /// Volumes.
    #[command(subcommand)]
    Volume(ctl::VolumeCmd),
    /// Mount leases.
    #[command(subcommand)]
    Lease(ctl::LeaseCmd),
    /// Usage and charges per host and volume.
    Usage(ctl::UsageArgs),
    /// A link that signs a browser in to the web console of the controller that answers
    /// (started with --http), as this certificate's identity (docs/console.md).
    Console,
    /// Serve a volume over NBD (qemu, nbd-client, fio, nbdcopy).
    #[command(subcommand)]
    Nbd(nbd::NbdCmd),
    /// Start a controller and three nodes here, and show everything on them (about a minute).
    ///
    /// Finds dasmesh-controller, dasmesh-node and dasmesh-bench next to this binary, starts them
    /// on free loopback ports with file backends in a temporary directory, creates mirror,
    /// stripe and concat volumes, copies data in and out and verifies it, searches it, runs a
    /// short benchmark against a local-file baseline, shows usage with charges, kills a node
    /// under the mirror, and stops everything. Exits non-zero if any check fails.
    Demo(demo::DemoArgs),
}

fn main() {
    let cli = Cli::parse();
    // The demo explains the failures it causes itself; the client's warnings about them would
    // only repeat it.
    let quiet = if matches!(cli.cmd, Cmd::Demo(_)) {
        "error"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| quiet.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cert = || ctl::load_cert(cli.cert.as_deref());
    let ctl = || cert().and_then(|c| ctl::controllers(&cli.controller, cli.failover_wait, c));
    let r = match cli.cmd {
        Cmd::Ca(c) => certs::ca(c),
        Cmd::Cert(c) => certs::cert(c, cli.json),
        Cmd::Keygen(a) => keys::keygen(&a),
        Cmd::Token(t) => keys::token(t, cli.json),
        Cmd::Io(c) => io::run(c, cli.json),
        Cmd::Controller(c) => ctl().and_then(|k| ctl::run(&k, cli.json, ctl::Ctl::Controller(c))),
        Cmd::Node(c) => ctl().and_then(|k| ctl::run(&k, cli.json, ctl::Ctl::Node(c))),
        Cmd::Pool => ctl().and_then(|k| ctl::run(&k, cli.json, ctl::Ctl::Pool)),
        Cmd::Volume(c) => ctl().and_then(|k| ctl::run(&k, cli.json, ctl::Ctl::Volume(c))),
        Cmd::Lease(c) => ctl().and_then(|k| ctl::run(&k, cli.json, ctl::Ctl::Lease(c))),
        Cmd::Usage(a) => ctl().and_then(|k| ctl::run(&k, cli.json, ctl::Ctl::Usage(a))),
        Cmd::Console => ctl().and_then(|k| ctl::run(&k, cli.json, ctl::Ctl::Console)),
        Cmd::Nbd(c) => cert().and_then(|_| nbd::run(c, &cli.controller)),
        Cmd::Demo(a) => demo::run(a),
    };
    if let Err(e) = r {
        eprintln!("dasmesh: {e:#}");
        std::process::exit(1);
    }
}
