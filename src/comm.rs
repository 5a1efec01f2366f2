//! Communicators for SyncBatchNorm: the collective operations normkit needs from whatever
//! process group the caller runs (threads in one process, MPI, NCCL, gloo, ...).
//! [`LocalCommunicator`] is the in-process group; feature `nccl` adds
//! `normkit::nccl::NcclCommunicator` over an NCCL communicator.
//!
//! SyncBatchNorm makes one collective call per step and direction:
//! * forward: [`Communicator::all_gather`] of one f64 payload per rank,
//!   `[count, mean(C), M2(C)]` (`2C + 1` values);
//! * backward: [`Communicator::all_reduce_sum`] of `[Σdy (C), Σdy·(x − μ) (C)]`.
//!
//! Every rank must make the same calls in the same order, also ranks whose local batch is empty
//! (they contribute count 0). A failing collective must fail on every rank (the in-process
//! group does this), so that every rank returns the error and leaves its state unchanged.

use crate::error::{Error, ErrorKind, Result};
use std::fmt;
use std::sync::{Arc, Barrier, Mutex};

/// The collectives SyncBatchNorm needs. Implementations must be usable from the thread that
/// runs the rank's forward/backward.
pub trait Communicator: Send + Sync {
    /// Number of ranks in the group.
    fn world_size(&self) -> usize;
    /// This rank's index, `0..world_size`.
    fn rank(&self) -> usize;
    /// Gathers `send` from every rank into `recv` (`world_size · send.len()` values, in rank
    /// order). Every rank passes the same length.
    fn all_gather(&self, send: &[f64], recv: &mut [f64]) -> Result<()>;
    /// Replaces `data` by its elementwise sum over all ranks.
    fn all_reduce_sum(&self, data: &mut [f64]) -> Result<()>;
}

impl fmt::Debug for dyn Communicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Communicator(rank {} of {})",
            self.rank(),
            self.world_size()
        )
    }
}

/// The shared state of an in-process group.
struct Shared {
    slots: Mutex<Vec<Vec<f64>>>,
    barrier: Barrier,
}

/// One rank of an in-process group: ranks are threads of one process (one per GPU, or tests).
/// Make a group with [`LocalCommunicator::group`] and move one member to each thread.
#[derive(Clone)]
pub struct LocalCommunicator {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

impl LocalCommunicator {
    /// A group of `size` ranks.
    pub fn group(size: usize) -> Vec<LocalCommunicator> {
        let shared = Arc::new(Shared {
            slots: Mutex::new(vec![Vec::new(); size]),
            barrier: Barrier::new(size),
        });
        (0..size)
            .map(|rank| LocalCommunicator {
                rank,
                size,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Publishes `send`, waits for every rank, and hands all payloads to `read`; a second
    /// barrier keeps the slots alive until every rank has read them.
    fn exchange<R>(&self, send: &[f64], read: impl FnOnce(&[Vec<f64>]) -> R) -> R {
        {
            let mut slots = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots[self.rank] = send.to_vec();
        }
        self.shared.barrier.wait();
        let r = {
            let slots = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
            read(&slots)
        };
        self.shared.barrier.wait();
        r
    }
}

/// Marks an error of a collective as [`ErrorKind::Communication`].
pub fn communication(mut e: Error) -> Error {
    e.kind = ErrorKind::Communication;
    e
}

fn size_mismatch(op: &str, lens: &[usize]) -> Error {
    Error::new(
        ErrorKind::Communication,
        op,
        "payload",
        "the same payload length on every rank",
        format!("lengths {lens:?} (by rank)"),
    )
}

impl Communicator for LocalCommunicator {
    fn world_size(&self) -> usize {
        self.size
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn all_gather(&self, send: &[f64], recv: &mut [f64]) -> Result<()> {
        let op = "LocalCommunicator::all_gather";
        self.exchange(send, |slots| {
            let lens: Vec<usize> = slots.iter().map(Vec::len).collect();
            if lens.iter().any(|&l| l != lens[0]) {
                return Err(size_mismatch(op, &lens));
            }
            if recv.len() != lens[0] * self.size {
                return Err(Error::shape(
                    op,
                    "recv",
                    format!("{} values (world size × payload)", lens[0] * self.size),
                    format!("{} values", recv.len()),
                ));
            }
            for (chunk, s) in recv.chunks_mut(lens[0].max(1)).zip(slots) {
                chunk.copy_from_slice(s);
            }
            Ok(())
        })
    }
    fn all_reduce_sum(&self, data: &mut [f64]) -> Result<()> {
        let op = "LocalCommunicator::all_reduce_sum";
        let send = data.to_vec();
        self.exchange(&send, |slots| {
            let lens: Vec<usize> = slots.iter().map(Vec::len).collect();
            if lens.iter().any(|&l| l != lens[0]) {
                return Err(size_mismatch(op, &lens));
            }
            // the same order on every rank: every rank gets bit-identical sums
            for (i, d) in data.iter_mut().enumerate() {
                *d = slots.iter().map(|s| s[i]).sum();
            }
            Ok(())
        })
    }
}

/// The per-rank statistics exchanged by SyncBatchNorm's forward: `(count, mean, M2)`.
#[derive(Clone, Debug, PartialEq)]
pub struct RankMoments {
    pub count: f64,
    pub mean: Vec<f64>,
    pub m2: Vec<f64>,
}

/// Exchanges this rank's moments and merges everyone's with Chan's parallel formula, in rank
/// order (so every rank computes bit-identical global moments). Ranks with count 0 drop out.
pub fn all_gather_moments(comm: &dyn Communicator, local: &RankMoments) -> Result<RankMoments> {
    let c = local.mean.len();
    let mut payload = Vec::with_capacity(2 * c + 1);
    payload.push(local.count);
    payload.extend_from_slice(&local.mean);
    payload.extend_from_slice(&local.m2);
    let mut all = vec![0.0; payload.len() * comm.world_size()];
    comm.all_gather(&payload, &mut all).map_err(communication)?;
    let mut merged = RankMoments {
        count: 0.0,
        mean: vec![0.0; c],
        m2: vec![0.0; c],
    };
    for rank in all.chunks(2 * c + 1) {
        let nb = rank[0];
        if nb.is_nan() || nb < 1.0 {
            continue;
        }
        let na = merged.count;
        let n = na + nb;
        for k in 0..c {
            let (mb, m2b) = (rank[1 + k], rank[1 + c + k]);
            let delta = mb - merged.mean[k];
            // a non-finite side keeps the mean of Σx/n (±∞, or NaN), which `+= δ·nb/n` would
            // turn into NaN (∞ − ∞) at the next finite rank; m2 is NaN either way
            if merged.mean[k].is_finite() && mb.is_finite() {
                merged.mean[k] += delta * nb / n;
            } else {
                merged.mean[k] += mb;
            }
            merged.m2[k] += m2b + delta * delta * na * nb / n;
        }
        merged.count = n;
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chan_merge_equals_the_whole_batch() {
        let data = [vec![1.0, 2.0, 4.0], vec![], vec![10.0, -3.0]];
        let group = LocalCommunicator::group(3);
        let handles: Vec<_> = group
            .into_iter()
            .zip(data.clone())
            .map(|(comm, d)| {
                std::thread::spawn(move || {
                    let n = d.len() as f64;
                    let mean = if d.is_empty() {
                        0.0
                    } else {
                        d.iter().sum::<f64>() / n
                    };
                    let m2 = d.iter().map(|v| (v - mean).powi(2)).sum::<f64>();
                    all_gather_moments(
                        &comm,
                        &RankMoments {
                            count: n,
                            mean: vec![mean],
                            m2: vec![m2],
                        },
                    )
                })
            })
            .collect();
        let all: Vec<f64> = data.concat();
        let mean = all.iter().sum::<f64>() / 5.0;
        let m2: f64 = all.iter().map(|v| (v - mean).powi(2)).sum();
        for h in handles {
            let got = h.join().unwrap().unwrap();
            assert_eq!(got.count, 5.0);
            assert!(
                (got.mean[0] - mean).abs() < 1e-12 && (got.m2[0] - m2).abs() < 1e-9,
                "{got:?}"
            );
        }
    }

    #[test]
    fn an_infinite_rank_mean_stays_infinite() {
        // per channel: (rank 0 mean, rank 1 mean, expected global mean) as Σx/n gives it
        let cases = [
            (f64::INFINITY, 1.0, f64::INFINITY),
            (1.0, f64::NEG_INFINITY, f64::NEG_INFINITY),
            (f64::INFINITY, f64::NEG_INFINITY, f64::NAN),
            (f64::NAN, 1.0, f64::NAN),
            (2.0, 4.0, 3.2),
        ];
        let group = LocalCommunicator::group(2);
        let handles: Vec<_> = group
            .into_iter()
            .enumerate()
            .map(|(r, comm)| {
                let mean: Vec<f64> = cases.iter().map(|c| [c.0, c.1][r]).collect();
                std::thread::spawn(move || {
                    let local = RankMoments {
                        count: [2.0, 3.0][r],
                        m2: vec![0.0; mean.len()],
                        mean,
                    };
                    all_gather_moments(&comm, &local)
                })
            })
            .collect();
        for h in handles {
            let got = h.join().unwrap().unwrap();
            for (k, c) in cases.iter().enumerate() {
                let ok = if c.2.is_nan() {
                    got.mean[k].is_nan()
                } else {
                    (got.mean[k] - c.2).abs() <= 1e-12 * c.2.abs() || got.mean[k] == c.2
                };
                assert!(ok, "channel {k}: {} vs {}", got.mean[k], c.2);
            }
        }
    }

    #[test]
    fn mismatched_payloads_fail_on_every_rank() {
        let group = LocalCommunicator::group(2);
        let handles: Vec<_> = group
            .into_iter()
            .enumerate()
            .map(|(r, comm)| {
                std::thread::spawn(move || {
                    let mut data = vec![1.0; 2 + r];
                    comm.all_reduce_sum(&mut data)
                })
            })
            .collect();
        for h in handles {
            let e = h.join().unwrap().unwrap_err();
            assert!(e.to_string().contains("same payload length"), "{e}");
        }
    }
}
