//! Gradient synchronisation behind one trait: gradients flattened into buckets of a fixed size in
//! a fixed order, summed over ranks, divided by the world size. The stop flag of preemption rides
//! in the last bucket, so every rank learns at the same step whether any rank wants to stop.

use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::topology::{Communicator, SimpleCommunicator};
use tch::{Kind, Tensor};

use super::DistError;

/// Averages gradients over ranks.
pub trait GradSync {
    /// Replaces every gradient by its mean over ranks; returns whether any rank raised `stop`.
    fn sync(&mut self, grads: &[Tensor], stop: bool) -> Result<bool, DistError>;
}

/// Splits tensors (by element count) into buckets of at most `bucket` elements, in order; a
/// tensor larger than a bucket gets a bucket of its own.
pub fn buckets(numels: &[usize], bucket: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, &n) in numels.iter().enumerate() {
        if size > 0 && size + n > bucket {
            out.push(start..i);
            start = i;
            size = 0;
        }
        size += n;
    }
    if start < numels.len() {
        out.push(start..numels.len());
    }
    out
}

/// The MPI backend (CPU tensors).
pub struct MpiGradSync<'a> {
    comm: &'a SimpleCommunicator,
    bucket_elems: usize,
    /// Divide the sum by the world size (always, except to show in a test what omitting it does).
    pub average: bool,
}

impl std::fmt::Debug for MpiGradSync<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiGradSync")
            .field("bucket_elems", &self.bucket_elems)
            .field("average", &self.average)
            .finish()
    }
}

impl<'a> MpiGradSync<'a> {
    /// Buckets of `bucket_mb` MiB of float32.
    pub fn new(comm: &'a SimpleCommunicator, bucket_mb: f64) -> Self {
        Self {
            comm,
            bucket_elems: ((bucket_mb * (1u64 << 20) as f64) / 4.0).max(1.0) as usize,
            average: true,
        }
    }
}

impl GradSync for MpiGradSync<'_> {
    fn sync(&mut self, grads: &[Tensor], stop: bool) -> Result<bool, DistError> {
        let world = self.comm.size() as f32;
        let numels: Vec<usize> = grads.iter().map(Tensor::numel).collect();
        let groups = buckets(&numels, self.bucket_elems);
        let mut any_stop = stop;
        for (b, range) in groups.iter().enumerate() {
            let parts: Vec<Tensor> = grads[range.clone()]
                .iter()
                .map(|g| g.to_kind(Kind::Float).flatten(0, -1))
                .collect();
            let mut send: Vec<f32> =
                Vec::try_from(Tensor::cat(&parts, 0)).map_err(|e| DistError::Backend {
                    rank: self.comm.rank(),
                    message: format!("gradient bucket {b}: {e}"),
                })?;
            let last = b + 1 == groups.len();
            if last {
                send.push(if stop { 1.0 } else { 0.0 });
            }
            let mut recv = vec![0.0f32; send.len()];
            self.comm
                .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
            if last {
                any_stop = recv.pop().unwrap_or(0.0) > 0.0;
            }
            if self.average {
                recv.iter_mut().for_each(|v| *v /= world);
            }
            let flat = Tensor::from_slice(&recv);
            let mut offset = 0i64;
            for g in &grads[range.clone()] {
                let n = g.numel() as i64;
                let mut g = g.shallow_clone();
                tch::no_grad(|| g.copy_(&flat.narrow(0, offset, n).view_as(&g)));
                offset += n;
            }
        }
        if groups.is_empty() {
            let mut recv = [0.0f32];
            self.comm.all_reduce_into(
                &[if stop { 1.0f32 } else { 0.0 }][..],
                &mut recv[..],
                SystemOperation::sum(),
            );
            any_stop = recv[0] > 0.0;
        }
        Ok(any_stop)
    }
}

/// Copies rank 0's values of `params` to every rank (at start and after a resume).
pub fn broadcast_params(comm: &SimpleCommunicator, params: &[Tensor]) -> Result<(), DistError> {
    use mpi::collective::Root;
    let rank = comm.rank();
    for (i, p) in params.iter().enumerate() {
        let mut buf: Vec<f32> =
            Vec::try_from(p.to_kind(Kind::Float).flatten(0, -1)).map_err(|e| {
                DistError::Backend {
                    rank,
                    message: format!("parameter {i}: {e}"),
                }
            })?;
        comm.process_at_rank(0).broadcast_into(&mut buf[..]);
        let src = Tensor::from_slice(&buf)
            .view_as(p)
            .to_kind(p.kind())
            .to_device(p.device());
        tch::no_grad(|| p.shallow_clone().copy_(&src));
    }
    Ok(())
}

/// Compares a checksum of `params` across ranks; a mismatch names the ranks that differ from rank 0.
pub fn check_params(
    comm: &SimpleCommunicator,
    params: &[Tensor],
    step: u64,
) -> Result<(), DistError> {
    let sum: f64 = params
        .iter()
        .map(|p| f64::try_from(p.to_kind(Kind::Double).abs().sum(Kind::Double)).unwrap_or(f64::NAN))
        .sum();
    let mut all = vec![0.0f64; comm.size() as usize];
    comm.all_gather_into(&sum, &mut all[..]);
    let differ: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, &s)| s.to_bits() != all[0].to_bits())
        .map(|(r, _)| r)
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(DistError::Desync {
            rank: comm.rank(),
            step,
            ranks: differ,
        })
    }
}
