//! The NCCL backend (GPU tensors), through cudarc with the libraries loaded at run time: the
//! binary builds and starts everywhere; a rank asked for NCCL without a CUDA driver or libnccl
//! gets an error naming what is missing.
//!
//! Streams: libtorch (through tch) queues its kernels on the legacy default stream, and the
//! all-reduces here are queued on that same stream, so a bucket is reduced after the backward
//! pass wrote it and before the optimizer reads it, without host synchronisation.

use std::ffi::{c_char, c_void};
use std::mem::MaybeUninit;
use std::sync::Arc;

use cudarc::driver::CudaContext;
use cudarc::nccl::{result as nr, sys as ns};
use mpi::collective::Root;
use mpi::topology::Communicator;
use tch::{Device, Kind, Tensor};

use super::{buckets, DistError, GradSync, Runtime};

/// Gradient averaging with NCCL all-reduces of flattened buckets.
pub struct NcclGradSync {
    comm: ns::ncclComm_t,
    /// Keeps the device's primary context retained while the communicator lives.
    _ctx: Arc<CudaContext>,
    rank: i32,
    world: i32,
    bucket_elems: usize,
}

impl std::fmt::Debug for NcclGradSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclGradSync")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("bucket_elems", &self.bucket_elems)
            .finish_non_exhaustive()
    }
}

/// Whether the CUDA driver and NCCL libraries can be loaded (never panics).
pub fn nccl_available() -> Result<(), String> {
    // SAFETY: both functions only try to open the shared libraries by name.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so) cannot be loaded on this node".into());
    }
    // SAFETY: as above.
    if !unsafe { ns::is_culib_present() } {
        return Err(
            "libnccl.so cannot be loaded: install NCCL, or link libnccl.so to the \
                    libnccl.so.2 of the torch wheel's nvidia/nccl/lib and put it on \
                    LD_LIBRARY_PATH (ci/setup.sh does this)"
                .into(),
        );
    }
    Ok(())
}

fn nccl_err(what: &str, e: nr::NcclError) -> String {
    format!("{what} failed: {:?}", e.0)
}

impl NcclGradSync {
    /// Creates the communicator of all ranks (a collective): rank 0 makes the unique id and
    /// broadcasts it over MPI. `device` must be this rank's CUDA device.
    pub fn new(rt: &Runtime, device: Device, bucket_mb: f64) -> Result<Self, DistError> {
        let rank = rt.rank();
        let err = |message: String| DistError::Backend { rank, message };
        let Device::Cuda(ordinal) = device else {
            return Err(err(
                "nccl needs a CUDA device, but this rank runs on the CPU".into(),
            ));
        };
        // Every rank checks its libraries, then all agree before anyone blocks in a collective.
        let local = nccl_available();
        let mut ok = [i32::from(local.is_ok())];
        let mut all = [0i32];
        mpi::collective::CommunicatorCollectives::all_reduce_into(
            rt.comm(),
            &ok[..],
            &mut all[..],
            mpi::collective::SystemOperation::min(),
        );
        if let Err(m) = local {
            return Err(err(m));
        }
        if all[0] == 0 {
            return Err(err(
                "another rank cannot load CUDA/NCCL (see its message)".into()
            ));
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| err(format!("CUDA device {ordinal}: {e}")))?;
        // 128 bytes of id, then a flag: rank 0 could make one.
        let mut id = [0u8; 129];
        if rank == 0 {
            match nr::get_uniqueid() {
                Ok(u) => {
                    for (b, c) in id.iter_mut().zip(u.internal) {
                        *b = c as u8;
                    }
                    id[128] = 1;
                }
                Err(e) => eprintln!("{}", nccl_err("ncclGetUniqueId on rank 0", e)),
            }
        }
        rt.comm().process_at_rank(0).broadcast_into(&mut id[..]);
        ok[0] = i32::from(id[128]);
        if ok[0] == 0 {
            return Err(err("rank 0 could not create the NCCL unique id".into()));
        }
        let mut internal = [0 as c_char; 128];
        for (c, b) in internal.iter_mut().zip(&id[..128]) {
            *c = *b as c_char;
        }
        let uid = ns::ncclUniqueId { internal };
        let mut comm = MaybeUninit::<ns::ncclComm_t>::uninit();
        let world = rt.comm().size();
        // SAFETY: `comm` is written by NCCL on success; the id is the job's common id; the
        // calling thread has the device's primary context current (CudaContext::new binds it).
        unsafe { nr::comm_init_rank(comm.as_mut_ptr(), world, uid, rank) }
            .map_err(|e| err(nccl_err("ncclCommInitRank", e)))?;
        Ok(Self {
            // SAFETY: initialised by the successful ncclCommInitRank above.
            comm: unsafe { comm.assume_init() },
            _ctx: ctx,
            rank,
            world,
            bucket_elems: ((bucket_mb * (1u64 << 20) as f64) / 4.0).max(1.0) as usize,
        })
    }

    /// Sums a contiguous float32 CUDA tensor over ranks, in place, on the default stream.
    fn all_reduce(&self, flat: &Tensor, what: &str) -> Result<(), DistError> {
        let ptr = flat.data_ptr();
        // SAFETY: `flat` is a contiguous float32 tensor on this rank's device, alive until the
        // call returns, and later work on it is queued on the same (default) stream.
        unsafe {
            nr::all_reduce(
                ptr as *const c_void,
                ptr,
                flat.numel(),
                ns::ncclDataType_t::ncclFloat32,
                ns::ncclRedOp_t::ncclSum,
                self.comm,
                std::ptr::null_mut(),
            )
        }
        .map(|_| ())
        .map_err(|e| DistError::Backend {
            rank: self.rank,
            message: nccl_err(&format!("ncclAllReduce of {what}"), e),
        })
    }
}

impl GradSync for NcclGradSync {
    fn sync(&mut self, grads: &[Tensor], stop: bool) -> Result<bool, DistError> {
        let numels: Vec<usize> = grads.iter().map(Tensor::numel).collect();
        let groups = buckets(&numels, self.bucket_elems);
        let device = grads.first().map_or(Device::Cpu, Tensor::device);
        let flag = Tensor::from_slice(&[if stop { 1.0f32 } else { 0.0 }]).to_device(device);
        let mut any_stop = stop;
        for (b, range) in groups.iter().enumerate() {
            let mut parts: Vec<Tensor> = grads[range.clone()]
                .iter()
                .map(|g| g.to_kind(Kind::Float).flatten(0, -1))
                .collect();
            let last = b + 1 == groups.len();
            if last {
                parts.push(flag.shallow_clone());
            }
            let mut flat = Tensor::cat(&parts, 0);
            self.all_reduce(&flat, &format!("gradient bucket {b}"))?;
            if last {
                any_stop = f64::try_from(flat.get(flat.numel() as i64 - 1)).unwrap_or(0.0) > 0.0;
            }
            let _ = flat.g_div_scalar_(f64::from(self.world));
            let mut offset = 0i64;
            for g in &grads[range.clone()] {
                let n = g.numel() as i64;
                let mut g = g.shallow_clone();
                tch::no_grad(|| g.copy_(&flat.narrow(0, offset, n).view_as(&g)));
                offset += n;
            }
        }
        if groups.is_empty() {
            let flat = flag.copy();
            self.all_reduce(&flat, "the stop flag")?;
            any_stop = f64::try_from(&flat.sum(Kind::Float)).unwrap_or(0.0) > 0.0;
        }
        Ok(any_stop)
    }
}

impl Drop for NcclGradSync {
    fn drop(&mut self) {
        // SAFETY: the communicator was initialised in `new` and is destroyed once.
        let _ = unsafe { nr::comm_destroy(self.comm) };
    }
}
