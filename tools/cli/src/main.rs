//! `dasmesh`: the operator and host command line.
#![forbid(unsafe_code)]

mod io;
mod keys;

use clap::{Parser, Subcommand};

/// dasmesh: pooled direct-attached storage.
#[derive(Parser)]
#[command(name = "dasmesh", version, about)]
struct Cli {
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
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Keygen(a) => keys::keygen(&a),
        Cmd::Token(t) => keys::token(t),
        Cmd::Io(c) => io::run(c),
    };
    if let Err(e) = r {
        eprintln!("dasmesh: {e:#}");
        std::process::exit(1);
    }
}
