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
    /// The controller's gRPC URL.
    #[arg(
        long,
        global = true,
        env = "DASMESH_CONTROLLER",
        default_value = "http://127.0.0.1:7600"
    )]
    controller: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a signing key pair (DIR/signing.key, DIR/public.key).
    Keygen(keys::KeygenArgs),
    /// Mint or show capability tokens.
    #[command(subcommand)]
    Token(keys::TokenCmd),
    /// Talk to a node directly with a token.
    #[command(subcommand)]
    Io(io::IoCmd),
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
    let r = match cli.cmd {
        Cmd::Keygen(a) => keys::keygen(&a),
        Cmd::Token(t) => keys::token(t, cli.json),
        Cmd::Io(c) => io::run(c, cli.json),
        Cmd::Node(c) => ctl::run(&cli.controller, cli.json, ctl::Ctl::Node(c)),
        Cmd::Pool => ctl::run(&cli.controller, cli.json, ctl::Ctl::Pool),
        Cmd::Volume(c) => ctl::run(&cli.controller, cli.json, ctl::Ctl::Volume(c)),
        Cmd::Lease(c) => ctl::run(&cli.controller, cli.json, ctl::Ctl::Lease(c)),
        Cmd::Usage(a) => ctl::run(&cli.controller, cli.json, ctl::Ctl::Usage(a)),
        Cmd::Nbd(c) => nbd::run(c, &cli.controller),
        Cmd::Demo(a) => demo::run(a),
    };
    if let Err(e) = r {
        eprintln!("dasmesh: {e:#}");
        std::process::exit(1);
    }
}
