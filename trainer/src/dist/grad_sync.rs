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

    /// Releases the backend at a clean end of training (every rank calls it). A backend dropped
    /// without it is on an error path and must not wait for its peers.
    fn shutdown(&mut self) -> Result<(), DistError> {
        Ok(())
    }
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

/// The MPI backend (CPU tensors), without copies: like DDP's `gradient_as_bucket_view`, each
/// gradient is a view into a flat bucket buffer, so the backward pass accumulates straight into
/// the buffer that is all-reduced. Every bucket has two buffers: the gradients alias one, the sum
/// lands in the other, and the gradients are re-pointed (`set_data`, no copy) at the sum. The
/// only pass over the data besides MPI's is the division by the world size.
pub struct MpiGradSync<'a> {
    comm: &'a SimpleCommunicator,
    bucket_elems: usize,
    /// Divide the sum by the world size (always, except to show in a test what omitting it does).
    pub average: bool,
    layout: Option<Layout>,
}

/// The bucket buffers of one gradient set.
struct Layout {
    numels: Vec<usize>,
    groups: Vec<std::ops::Range<usize>>,
    /// Per bucket, two float32 buffers of its elements (+1 for the stop flag in the last one).
    buffers: Vec<[Tensor; 2]>,
    /// Per buffer index, each gradient's view into its bucket's buffer, and its address.
    views: [Vec<(Tensor, usize)>; 2],
    /// Which buffer of each bucket the gradients alias.
    current: usize,
}

impl std::fmt::Debug for MpiGradSync<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiGradSync")
            .field("bucket_elems", &self.bucket_elems)
            .field("average", &self.average)
            .field("buckets", &self.layout.as_ref().map(|l| l.groups.len()))
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
            layout: None,
        }
    }

    fn err(&self, message: String) -> DistError {
        DistError::Backend {
            rank: self.comm.rank(),
            message,
        }
    }

    /// Points every gradient at its place in buffer `which` of its bucket; with `keep`, copies
    /// the gradient's values there first (when it does not alias it already).
    fn alias(layout: &Layout, grads: &[Tensor], which: usize, keep: bool) {
        for (g, (view, ptr)) in grads.iter().zip(&layout.views[which]) {
            if g.data_ptr() as usize != *ptr {
                let mut g = g.shallow_clone();
                tch::no_grad(|| {
                    if keep {
                        view.shallow_clone().copy_(&g);
                    }
                    g.set_data(view);
                });
            }
        }
    }
}

/// Sums `send` over ranks into `recv` (equal lengths, contiguous float32 CPU tensors).
fn all_reduce(comm: &SimpleCommunicator, send: &Tensor, recv: &Tensor) {
    let n = send.numel();
    // SAFETY: both tensors are contiguous float32 CPU buffers of n elements, allocated by
    // `Layout` and alive for this call; they are distinct allocations, and nothing else reads or
    // writes them while MPI runs.
    let (s, r) = unsafe {
        (
            std::slice::from_raw_parts(send.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(recv.data_ptr() as *mut f32, n),
        )
    };
    comm.all_reduce_into(s, r, SystemOperation::sum());
}

impl GradSync for MpiGradSync<'_> {
    fn sync(&mut self, grads: &[Tensor], stop: bool) -> Result<bool, DistError> {
        for (i, g) in grads.iter().enumerate() {
            if !g.defined() {
                return Err(self.err(format!(
                    "parameter {i} has no gradient (not used in the forward pass)"
                )));
            }
            if g.kind() != Kind::Float || g.device() != tch::Device::Cpu {
                return Err(self.err(format!(
                    "parameter {i}: the MPI backend reduces float32 CPU gradients, got {:?} on {:?}",
                    g.kind(),
                    g.device()
                )));
            }
        }
        let numels: Vec<usize> = grads.iter().map(Tensor::numel).collect();
        if self.layout.as_ref().is_none_or(|l| l.numels != numels) {
            let groups = buckets(&numels, self.bucket_elems);
            let buffers = groups
                .iter()
                .enumerate()
                .map(|(b, r)| {
                    let n: usize = numels[r.clone()].iter().sum();
                    let n = (n + usize::from(b + 1 == groups.len())) as i64;
                    let z = || Tensor::zeros([n], (Kind::Float, tch::Device::Cpu));
                    [z(), z()]
                })
                .collect::<Vec<[Tensor; 2]>>();
            let views = [0, 1].map(|which| {
                let mut out = Vec::with_capacity(grads.len());
                for (range, bufs) in groups.iter().zip(&buffers) {
                    let buf: &Tensor = &bufs[which];
                    let mut offset = 0i64;
                    for g in &grads[range.clone()] {
                        let n = g.numel() as i64;
                        let v = buf.narrow(0, offset, n).view(g.size().as_slice());
                        let ptr = v.data_ptr() as usize;
                        out.push((v, ptr));
                        offset += n;
                    }
                }
                out
            });
            self.layout = Some(Layout {
                numels,
                groups,
                buffers,
                views,
                current: 0,
            });
        }
        let world = self.comm.size();
        let (average, comm) = (self.average, self.comm);
        let Some(layout) = self.layout.as_mut() else {
            return Err(self.err("no bucket layout".into()));
        };
        let cur = layout.current;
        // Gradients replaced since the last step (e.g. set to None) are copied in and re-aliased.
        Self::alias(layout, grads, cur, true);
        let mut any_stop = stop;
        let last = layout.groups.len().saturating_sub(1);
        for (b, [x, y]) in layout.buffers.iter().enumerate() {
            let (send, recv) = if cur == 0 { (x, y) } else { (y, x) };
            let n = send.numel() as i64 - i64::from(b == last);
            tch::no_grad(|| {
                if average {
                    let _ = send.narrow(0, 0, n).g_mul_scalar_(1.0 / f64::from(world));
                }
                if b == last {
                    let _ = send.narrow(0, n, 1).fill_(if stop { 1.0 } else { 0.0 });
                }
            });
            all_reduce(comm, send, recv);
            if b == last {
                any_stop = crate::host::scalar(&recv.get(n)).map_err(|e| DistError::Backend {
                    rank: comm.rank(),
                    message: format!("reading the stop flag: {e}"),
                })? > 0.0;
            }
        }
        if layout.groups.is_empty() {
            let mut recv = [0.0f32];
            comm.all_reduce_into(
                &[if stop { 1.0f32 } else { 0.0 }][..],
                &mut recv[..],
                SystemOperation::sum(),
            );
            any_stop = recv[0] > 0.0;
        }
        layout.current = 1 - cur;
        // The sums are the gradients now.
        Self::alias(layout, grads, layout.current, false);
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
    // The per-tensor sums stay on the device; one read of their total.
    let sums: Vec<Tensor> = params
        .iter()
        .map(|p| p.to_kind(Kind::Double).abs().sum(Kind::Double))
        .collect();
    let sum = if sums.is_empty() {
        0.0
    } else {
        crate::host::scalar(&Tensor::stack(&sums, 0).sum(Kind::Double)).map_err(|e| {
            DistError::Backend {
                rank: comm.rank(),
                message: format!("parameter checksum: {e}"),
            }
        })?
    };
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
