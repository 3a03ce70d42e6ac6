//! io_uring features the node relies on, probed on this kernel: ring setup flags, the opcodes of
//! the data path, registered (fixed) buffers and files. All through the io-uring crate's safe
//! calls: nothing is submitted here; the node's own I/O is exercised by the other checks.

use std::os::fd::AsRawFd;
use std::path::Path;

use io_uring::{opcode, IoUring, Probe};
use serde::Serialize;

/// What this kernel's io_uring offers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Features {
    /// A plain ring could be set up (else `error` says why).
    pub ring: bool,
    /// Why not.
    pub error: Option<String>,
    /// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN (6.1+): the node's first choice.
    pub defer_taskrun: bool,
    /// IORING_SETUP_COOP_TASKRUN (5.19+): the node's fallback.
    pub coop_taskrun: bool,
    /// READ_FIXED and WRITE_FIXED are supported and a buffer table can be registered.
    pub fixed_buffers: bool,
    /// The device's descriptor can be registered as a fixed file.
    pub fixed_files: bool,
    /// Opcodes of the node's data path and whether the kernel has each.
    pub opcodes: Vec<(String, bool)>,
    /// IORING_FEAT_* bits worth knowing.
    pub kernel_features: Vec<(String, bool)>,
}

impl Features {
    /// Whether the node can run its data path on this kernel.
    pub fn node_ready(&self) -> bool {
        self.ring
            && self.fixed_buffers
            && self.fixed_files
            && self.opcodes.iter().all(|(_, ok)| *ok)
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        if !self.ring {
            return format!(
                "no io_uring: {}",
                self.error.as_deref().unwrap_or("unknown")
            );
        }
        let yes = |b: bool| if b { "yes" } else { "NO" };
        format!(
            "DEFER_TASKRUN {}, COOP_TASKRUN {}, fixed buffers {}, fixed files {}",
            yes(self.defer_taskrun),
            yes(self.coop_taskrun),
            yes(self.fixed_buffers),
            yes(self.fixed_files)
        )
    }
}

/// Probes io_uring, registering `dev` (opened read-only) as a fixed file if given.
pub fn probe(dev: Option<&Path>) -> Features {
    let mut f = Features::default();
    let ring: IoUring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            f.error = Some(format!("io_uring_setup: {e}"));
            return f;
        }
    };
    f.ring = true;
    f.defer_taskrun = IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)
        .is_ok();
    f.coop_taskrun = IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
        .setup_coop_taskrun()
        .build(8)
        .is_ok();
    let p = ring.params();
    f.kernel_features = vec![
        ("NODROP".into(), p.is_feature_nodrop()),
        ("FAST_POLL".into(), p.is_feature_fast_poll()),
        ("EXT_ARG".into(), p.is_feature_ext_arg()),
    ];
    let mut probe = Probe::new();
    let probed = ring.submitter().register_probe(&mut probe).is_ok();
    let ops = [
        ("READ_FIXED", opcode::ReadFixed::CODE),
        ("WRITE_FIXED", opcode::WriteFixed::CODE),
        ("FSYNC", opcode::Fsync::CODE),
        ("RECV", opcode::Recv::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("ACCEPT", opcode::Accept::CODE),
    ];
    f.opcodes = ops
        .iter()
        .map(|(n, c)| (n.to_string(), probed && probe.is_supported(*c)))
        .collect();
    let fixed_ops = probed
        && probe.is_supported(opcode::ReadFixed::CODE)
        && probe.is_supported(opcode::WriteFixed::CODE);
    // A sparse table (5.19+) registers no memory of ours, so the probe stays in safe code.
    f.fixed_buffers = fixed_ops && ring.submitter().register_buffers_sparse(4).is_ok();
    f.fixed_files = match dev {
        Some(d) => std::fs::File::open(d)
            .map(|file| ring.submitter().register_files(&[file.as_raw_fd()]).is_ok())
            .unwrap_or(false),
        None => ring.submitter().register_files_sparse(4).is_ok(),
    };
    f
}
