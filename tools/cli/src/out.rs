//! Standard output for every command: what `println!` and `print!` expand to in this crate
//! (main.rs shadows std's), and the writer `io read -` streams to. The reader of a pipe that
//! goes away (`dasmesh volume list | head -1`) ends the process quietly, with status 0, as it
//! does for the tools the output is piped through, instead of std's panic ("failed printing to
//! stdout: Broken pipe", exit 101).
//!
//! Why not restore SIGPIPE's default action at the start of `main`, as C tools get it: that
//! takes `unsafe` (libc::signal), which this crate forbids; and a death by signal would also
//! skip the tracing and cleanup of a command that has its own work to finish.

use std::io::{self, Write};

/// Writes `args` and a newline (`println!`).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let r = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    check(r);
}

/// Writes `args` (`print!`; no command prints a partial line yet, the macro is there so that
/// the first one to do so gets this too).
#[allow(dead_code)]
pub fn text(args: std::fmt::Arguments<'_>) {
    let r = io::stdout().lock().write_fmt(args);
    check(r);
}

/// Standard output as a writer whose closed pipe ends the process quietly too.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = io::stdout().lock().write(buf);
        Ok(check(r))
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = io::stdout().lock().flush();
        check(r);
        Ok(())
    }
}

/// The value of a write that worked; otherwise the end of the process: quietly for a closed
/// pipe (nobody is left to read what follows), with the error on stderr for anything else
/// (a full disk, a closed descriptor).
fn check<T>(r: io::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("dasmesh: writing to standard output: {e}");
            std::process::exit(1)
        }
    }
}
