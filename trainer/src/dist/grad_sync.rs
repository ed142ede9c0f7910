//! Gradient synchronisation behind one trait: the flat gradient buckets (`optim::Flat`, a fixed
//! layout in name order) summed over ranks in place and divided by the world size. The stop flag
//! of preemption rides in the last bucket, so every rank learns at the same step whether any
//! rank wants to stop.

use mpi::collective::CommunicatorCollectives;
use mpi::topology::{Communicator, SimpleCommunicator};
use syncdiff_model::config::ReduceDtype;
use tch::{Kind, Tensor};

use super::DistError;

/// Averages gradients over ranks.
pub trait GradSync {
    /// Replaces every gradient by its mean over ranks; returns whether any rank raised `stop`.
    ///
    /// `buffers` are the flat gradient buffers of [`Flat::reduce_buffers`]
    /// (crate::optim::Flat): contiguous float32 on the backend's device, reduced in place, the
    /// last element of the last one the stop slot. Every rank passes the same layout.
    fn sync(&mut self, buffers: &[Tensor], stop: bool) -> Result<bool, DistError>;

    /// Releases the backend at a clean end of training (every rank calls it). A backend dropped
    /// without it is on an error path and must not wait for its peers.
    fn shutdown(&mut self) -> Result<(), DistError> {
        Ok(())
    }
}

/// Checks the buffers a backend is given: at least one, contiguous float32 on `device`.
pub(crate) fn check_buffers(buffers: &[Tensor], device: tch::Device) -> Result<(), String> {
    if buffers.is_empty() {
        return Err("no gradient buffer (the last one carries the stop flag)".into());
    }
    for (b, t) in buffers.iter().enumerate() {
        if t.kind() != Kind::Float || t.device() != device || !t.is_contiguous() {
            return Err(format!(
                "gradient bucket {b}: expected contiguous float32 on {device:?}, got {:?} on {:?}",
                t.kind(),
                t.device()
            ));
        }
    }
    Ok(())
}

/// The MPI backend (CPU tensors): each bucket is scaled by 1/world and summed in place
/// (`MPI_IN_PLACE`), so the only pass over the data besides MPI's is the scaling. The gradients
/// are views of the buckets (see `Flat`), so the sums are the gradients; nothing is copied back.
pub struct MpiGradSync<'a> {
    comm: &'a SimpleCommunicator,
    /// Divide the sum by the world size (always, except to show in a test what omitting it does).
    pub average: bool,
    /// The element type on the wire (`dist.reduce_dtype`).
    pub dtype: ReduceDtype,
}

impl std::fmt::Debug for MpiGradSync<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiGradSync")
            .field("average", &self.average)
            .finish_non_exhaustive()
    }
}

impl<'a> MpiGradSync<'a> {
    /// The backend on `comm`.
    pub fn new(comm: &'a SimpleCommunicator) -> Self {
        Self {
            comm,
            average: true,
            dtype: ReduceDtype::Fp32,
        }
    }

    fn err(&self, message: String) -> DistError {
        DistError::Backend {
            rank: self.comm.rank(),
            message,
        }
    }
}

unsafe extern "C" {
    /// MPI_IN_PLACE of the MPI this was built against (csrc/mpi_in_place.c).
    fn syncdiff_mpi_in_place() -> *mut std::ffi::c_void;
    /// In-place bfloat16 sum over a communicator (csrc/mpi_in_place.c).
    fn syncdiff_bf16_allreduce(
        buf: *mut std::ffi::c_void,
        count: std::ffi::c_int,
        comm: mpi::ffi::MPI_Comm,
    ) -> std::ffi::c_int;
    /// csrc/mpi_in_place.c's float32 -> bfloat16 rounding.
    #[cfg(test)]
    fn syncdiff_f32_to_bf16(f: f32) -> u16;
}

/// Sums a contiguous float32 or bfloat16 CPU tensor over ranks, in place.
fn all_reduce_in_place(comm: &SimpleCommunicator, buf: &Tensor) -> Result<(), String> {
    use mpi::raw::AsRaw;
    let n = std::ffi::c_int::try_from(buf.numel()).map_err(|_| {
        format!(
            "a gradient bucket of {} elements is more than MPI counts: lower dist.bucket_mb",
            buf.numel()
        )
    })?;
    // SAFETY: `buf` is a contiguous CPU tensor of n elements of the kind matched (made or
    // checked by the caller), alive for this call, and nothing else touches it while MPI runs;
    // MPI_IN_PLACE tells MPI to read and write the receive buffer.
    let rc = unsafe {
        match buf.kind() {
            Kind::BFloat16 => syncdiff_bf16_allreduce(buf.data_ptr(), n, comm.as_raw()),
            _ => mpi::ffi::MPI_Allreduce(
                syncdiff_mpi_in_place(),
                buf.data_ptr(),
                n,
                mpi::ffi::RSMPI_FLOAT,
                mpi::ffi::RSMPI_SUM,
                comm.as_raw(),
            ),
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("MPI_Allreduce failed with error code {rc}"))
    }
}

/// Averages gradient buffer `buf` over the `world` ranks of `comm` in place: scaled by 1/world
/// (unless `average` is off), the stop slot at the end of the `last` buffer excepted, then summed
/// with `MPI_IN_PLACE`. The non-overlapped sync and the overlap's communication thread both
/// reduce through this, so the two give the same bits.
pub(crate) fn reduce_bucket(
    comm: &SimpleCommunicator,
    buf: &Tensor,
    last: bool,
    average: bool,
    dtype: ReduceDtype,
) -> Result<(), String> {
    let world = comm.size();
    if average {
        let n = buf.numel() as i64 - i64::from(last);
        tch::no_grad(|| {
            let _ = buf.narrow(0, 0, n).g_mul_scalar_(1.0 / f64::from(world));
        });
    }
    match dtype {
        ReduceDtype::Fp32 => all_reduce_in_place(comm, buf),
        ReduceDtype::Bf16 => tch::no_grad(|| {
            // The stop slot's 0s and 1s are exact in bfloat16 up to 256 ranks.
            let low = buf.to_kind(Kind::BFloat16);
            all_reduce_in_place(comm, &low)?;
            buf.shallow_clone().copy_(&low);
            Ok(())
        }),
    }
}

impl GradSync for MpiGradSync<'_> {
    fn sync(&mut self, buffers: &[Tensor], stop: bool) -> Result<bool, DistError> {
        check_buffers(buffers, tch::Device::Cpu).map_err(|m| self.err(m))?;
        let last = buffers.len() - 1;
        let mut any_stop = stop;
        for (b, buf) in buffers.iter().enumerate() {
            let n = buf.numel() as i64 - 1;
            if b == last {
                tch::no_grad(|| {
                    let _ = buf.narrow(0, n, 1).fill_(if stop { 1.0 } else { 0.0 });
                });
            }
            reduce_bucket(self.comm, buf, b == last, self.average, self.dtype)
                .map_err(|m| self.err(m))?;
            if b == last {
                any_stop = crate::host::scalar(&buf.get(n))
                    .map_err(|e| self.err(format!("reading the stop flag: {e}")))?
                    > 0.0;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The C bfloat16 sum rounds as libtorch's float32 -> bfloat16 conversion does (to nearest,
    /// ties to even), over ordinary values, halfway cases, subnormals, extremes and inf.
    #[test]
    fn the_bfloat16_sum_rounds_like_libtorch() {
        let mut values: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            1.0 + 1.0 / 256.0, // halfway between two bfloat16 values: ties to even
            1.0 + 3.0 / 256.0,
            3.0e-39,
            1.0e-42,
            3.3e38,
            -3.4e38,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        let mut x = 0x1234_5678u32;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let f = f32::from_bits(x);
            if !f.is_nan() {
                values.push(f);
            }
        }
        let t = Tensor::from_slice(&values).to_kind(Kind::BFloat16);
        let bits: Vec<i16> = Vec::try_from(t.view_dtype(Kind::Int16)).unwrap_or_default();
        assert_eq!(bits.len(), values.len());
        for (v, b) in values.iter().zip(bits) {
            // SAFETY: a pure function of its argument.
            let ours = unsafe { syncdiff_f32_to_bf16(*v) };
            assert_eq!(ours, b as u16, "{v:e} ({:#x})", v.to_bits());
        }
    }
}
