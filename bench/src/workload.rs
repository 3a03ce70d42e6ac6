//! The workload: what to issue (read or write, where), how many at once, for how long.

use std::time::Duration;

use rand::Rng;

/// Access pattern, as fio names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random mixed reads and writes (`--rwmixread` percent reads).
    Randrw,
}

impl Rw {
    /// Whether offsets are random.
    pub fn random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite | Rw::Randrw)
    }

    /// Whether any writes are issued.
    pub fn writes(self) -> bool {
        matches!(self, Rw::Write | Rw::Randwrite | Rw::Randrw)
    }
}

/// One workload, applied to every target of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Workload {
    /// Pattern.
    pub rw: Rw,
    /// Percent of reads in `randrw`.
    pub rwmixread: u32,
    /// Block size in bytes.
    pub bs: u64,
    /// Requests in flight per job.
    pub iodepth: usize,
    /// Jobs (threads; each with its own ring or connection).
    pub numjobs: usize,
    /// Bytes of the target used, from `offset`.
    pub size: u64,
    /// Start of the region.
    pub offset: u64,
    /// Measured time.
    #[serde(with = "humantime_serde_compat")]
    pub runtime: Duration,
    /// Warm-up time before measuring.
    #[serde(with = "humantime_serde_compat")]
    pub ramp: Duration,
    /// Open-loop pacing: total IOPS over all jobs (0: as fast as possible).
    pub rate_iops: u64,
    /// Writes carry a checksum and their offset; reads check them.
    pub verify: bool,
}

mod humantime_serde_compat {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Which op a job issues next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A read.
    Read,
    /// A write.
    Write,
}

/// Picks offsets and ops for one job.
pub struct Picker {
    rw: Rw,
    mix: u32,
    bs: u64,
    start: u64,
    blocks: u64,
    next_seq: u64,
    step: u64,
    rng: rand::rngs::StdRng,
}

impl Picker {
    /// A picker for job `job` of `jobs`: sequential jobs interleave their blocks.
    pub fn new(w: &Workload, region_start: u64, region_len: u64, job: usize, seed: u64) -> Self {
        use rand::SeedableRng;
        let blocks = region_len / w.bs;
        Self {
            rw: w.rw,
            mix: w.rwmixread,
            bs: w.bs,
            start: region_start,
            blocks,
            next_seq: job as u64 % blocks.max(1),
            step: w.numjobs as u64,
            rng: rand::rngs::StdRng::seed_from_u64(seed ^ job as u64),
        }
    }

    /// The next op and byte offset.
    pub fn next(&mut self) -> (Kind, u64) {
        let block = if self.rw.random() {
            self.rng.gen_range(0..self.blocks)
        } else {
            let b = self.next_seq;
            self.next_seq = (self.next_seq + self.step) % self.blocks;
            b
        };
        let kind = match self.rw {
            Rw::Read | Rw::Randread => Kind::Read,
            Rw::Write | Rw::Randwrite => Kind::Write,
            Rw::Randrw => {
                if self.rng.gen_range(0..100) < self.mix {
                    Kind::Read
                } else {
                    Kind::Write
                }
            }
        };
        (kind, self.start + block * self.bs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(rw: Rw) -> Workload {
        Workload {
            rw,
            rwmixread: 70,
            bs: 4096,
            iodepth: 1,
            numjobs: 2,
            size: 1 << 20,
            offset: 0,
            runtime: Duration::from_secs(1),
            ramp: Duration::ZERO,
            rate_iops: 0,
            verify: false,
        }
    }

    #[test]
    fn offsets_stay_aligned_in_the_region_and_mix_is_respected() {
        let mut p = Picker::new(&w(Rw::Randrw), 1 << 20, 1 << 20, 0, 1);
        let mut reads = 0;
        for _ in 0..10_000 {
            let (k, off) = p.next();
            assert!((1 << 20..2 << 20).contains(&off) && off.is_multiple_of(4096));
            reads += (k == Kind::Read) as u32;
        }
        assert!(
            (6500..7500).contains(&reads),
            "{reads} reads of 10000 at 70%"
        );
        // Sequential jobs interleave and wrap.
        let mut a = Picker::new(&w(Rw::Write), 0, 4 * 4096, 0, 1);
        let mut b = Picker::new(&w(Rw::Write), 0, 4 * 4096, 1, 1);
        let offs: Vec<u64> = (0..3).map(|_| a.next().1).collect();
        assert_eq!(offs, vec![0, 8192, 0]);
        assert_eq!(b.next(), (Kind::Write, 4096));
    }
}
