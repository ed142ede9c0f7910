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
use syncdiff_model::config::ReduceDtype;
use tch::{Device, Tensor};

use super::grad_sync::check_buffers;
use super::{DistError, GradSync, Runtime};

/// Gradient averaging with NCCL: each flat gradient bucket (see `optim::Flat`) averaged in
/// place (`ncclAvg`), one call per bucket, no staging copies.
pub struct NcclGradSync {
    comm: ns::ncclComm_t,
    /// Keeps the device's primary context retained while the communicator lives.
    ctx: Arc<CudaContext>,
    rank: i32,
    world: i32,
    device: Device,
    /// The element type on the wire (`dist.reduce_dtype`).
    pub dtype: ReduceDtype,
}

impl std::fmt::Debug for NcclGradSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclGradSync")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// The NCCL library this process uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NcclLibrary {
    /// The file it was loaded from (symbolic links resolved).
    pub path: std::path::PathBuf,
    /// `ncclGetVersion`: 22907 is 2.29.7.
    pub version: i32,
    /// Distinct NCCL files mapped into the process (1 when cudarc and libtorch share it).
    pub copies: usize,
}

impl NcclLibrary {
    /// `2.29.7` from 22907.
    pub fn version_string(&self) -> String {
        let v = self.version;
        format!("{}.{}.{}", v / 10_000, v / 100 % 100, v % 100)
    }
}

/// How to make `libnccl.so` loadable, for messages.
const NCCL_HINT: &str = "libnccl.so cannot be loaded: `bash ci/setup.sh` links it into the torch \
     wheel's torch/lib (the binaries' RUNPATH) from the wheel's nvidia/nccl/lib/libnccl.so.2; with \
     another NCCL, put a directory holding libnccl.so on LD_LIBRARY_PATH";

/// Loads NCCL the way the backend does (cudarc looks for `libnccl.so`) and says which file and
/// version it is; never panics. Needs no GPU.
pub fn nccl_library() -> Result<NcclLibrary, String> {
    // SAFETY: only tries to open the shared library by name.
    if !unsafe { ns::is_culib_present() } {
        return Err(NCCL_HINT.into());
    }
    let version = nr::get_nccl_version().map_err(|e| nccl_err("ncclGetVersion", e, None))?;
    // SAFETY: the library is present (checked above), so culib() loads it instead of panicking;
    // the symbol is only used for its address.
    let addr = unsafe {
        let lib = ns::culib();
        let sym = lib
            .get::<unsafe extern "C" fn()>(b"ncclGetVersion\0")
            .map_err(|e| format!("libnccl.so has no ncclGetVersion: {e}"))?;
        let f: unsafe extern "C" fn() = *sym;
        f as *const c_void
    };
    let mut info = MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr only reads the loader's tables and fills `info`.
    let found = unsafe { libc::dladdr(addr, info.as_mut_ptr()) };
    // SAFETY: zero-initialised, filled by dladdr when it returns non-zero.
    let info = unsafe { info.assume_init() };
    if found == 0 || info.dli_fname.is_null() {
        return Err("cannot tell which file libnccl.so was loaded from".into());
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the loader.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let path = std::path::PathBuf::from(name.to_string_lossy().into_owned());
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    Ok(NcclLibrary {
        path,
        version,
        copies: nccl_copies().len().max(1),
    })
}

/// The distinct NCCL library files mapped into this process (from /proc/self/maps).
pub fn nccl_copies() -> Vec<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut files: Vec<std::path::PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|f| {
            std::path::Path::new(f)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libnccl"))
        })
        .map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.into()))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Whether the CUDA driver and NCCL libraries can be loaded (never panics).
pub fn nccl_available() -> Result<(), String> {
    // SAFETY: only tries to open the shared library by name.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so) cannot be loaded on this node".into());
    }
    nccl_library().map(|_| ())
}

/// An NCCL error with NCCL's own description and, when a communicator exists, its last error.
fn nccl_err(what: &str, e: nr::NcclError, comm: Option<ns::ncclComm_t>) -> String {
    let text = |p: *const c_char| {
        // SAFETY: NCCL returns null or a NUL-terminated string it owns (static, or held by the
        // communicator), valid at least until the next NCCL call on this thread.
        (!p.is_null()).then(|| {
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        })
    };
    // SAFETY: the library is loaded (the error came from it); the call only formats a code.
    let described = text(unsafe { ns::ncclGetErrorString(e.0) }).unwrap_or_default();
    // SAFETY: `comm` is a live communicator, or null (NCCL's last error of the process).
    let last = text(unsafe { ns::ncclGetLastError(comm.unwrap_or(std::ptr::null_mut())) })
        .filter(|s| !s.is_empty())
        .map_or(String::new(), |s| format!("; last NCCL error: {s}"));
    format!("{what} failed: {:?} ({described}){last}", e.0)
}

impl NcclGradSync {
    /// Creates the communicator of all ranks (a collective): rank 0 makes the unique id and
    /// broadcasts it over MPI. `device` must be this rank's CUDA device.
    pub fn new(rt: &Runtime, device: Device) -> Result<Self, DistError> {
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
                Err(e) => eprintln!("{}", nccl_err("ncclGetUniqueId on rank 0", e, None)),
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
            .map_err(|e| err(nccl_err("ncclCommInitRank", e, None)))?;
        Ok(Self {
            // SAFETY: initialised by the successful ncclCommInitRank above.
            comm: unsafe { comm.assume_init() },
            ctx,
            rank,
            world,
            device,
            dtype: ReduceDtype::Fp32,
        })
    }

    /// Averages a contiguous float32 CUDA tensor over ranks, in place, on the default stream.
    fn all_reduce(&self, flat: &Tensor, what: &str) -> Result<(), DistError> {
        // SAFETY: the default stream orders the call after the work that wrote `flat` and
        // before later work on it.
        unsafe { self.all_reduce_on(flat, what, std::ptr::null_mut()) }
    }

    /// Averages a contiguous float32 or bfloat16 CUDA tensor over ranks, in place, queued on
    /// `stream`.
    ///
    /// # Safety
    /// `flat` is a contiguous float32 or bfloat16 tensor on this rank's device that stays allocated until
    /// the reduction ran, and `stream` (null: the default stream) is a live stream of this
    /// device ordered after the work that wrote `flat` and before later work that reads it.
    pub(crate) unsafe fn all_reduce_on(
        &self,
        flat: &Tensor,
        what: &str,
        stream: ns::cudaStream_t,
    ) -> Result<(), DistError> {
        let ptr = flat.data_ptr();
        let datatype = match flat.kind() {
            tch::Kind::BFloat16 => ns::ncclDataType_t::ncclBfloat16,
            _ => ns::ncclDataType_t::ncclFloat32,
        };
        // SAFETY: see the function's contract.
        unsafe {
            nr::all_reduce(
                ptr as *const c_void,
                ptr,
                flat.numel(),
                datatype,
                ns::ncclRedOp_t::ncclAvg,
                self.comm,
                stream,
            )
        }
        .map(|_| ())
        .map_err(|e| DistError::Backend {
            rank: self.rank,
            message: nccl_err(&format!("ncclAllReduce of {what}"), e, Some(self.comm)),
        })
    }
}

// SAFETY: an NCCL communicator may be used from another thread as long as calls on it do not
// run concurrently; the overlap moves it into its backend, behind one lock.
unsafe impl Send for NcclGradSync {}

impl NcclGradSync {
    /// The CUDA context of this rank's device.
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The clean end: waits for the queued work, then destroys the communicator.
    fn destroy(&mut self) -> Result<(), DistError> {
        let comm = std::mem::replace(&mut self.comm, std::ptr::null_mut());
        if comm.is_null() {
            return Ok(());
        }
        // SAFETY: initialised in `new`; nulled above so Drop does not release it again.
        unsafe { nr::comm_destroy(comm) }
            .map(|_| ())
            .map_err(|e| DistError::Backend {
                rank: self.rank,
                message: nccl_err("ncclCommDestroy", e, None),
            })
    }
}

impl GradSync for NcclGradSync {
    fn shutdown(&mut self) -> Result<(), DistError> {
        self.destroy()
    }

    fn sync(&mut self, buffers: &[Tensor], stop: bool) -> Result<bool, DistError> {
        let err = |message: String| DistError::Backend {
            rank: self.rank,
            message,
        };
        check_buffers(buffers, self.device).map_err(err)?;
        let last = buffers.len() - 1;
        let mut any_stop = stop;
        for (b, buf) in buffers.iter().enumerate() {
            let n = buf.numel() as i64 - 1;
            let what = if b == last {
                tch::no_grad(|| {
                    let _ = buf.narrow(0, n, 1).fill_(if stop { 1.0 } else { 0.0 });
                });
                format!("gradient bucket {b} with the stop flag")
            } else {
                format!("gradient bucket {b}")
            };
            match self.dtype {
                ReduceDtype::Fp32 => self.all_reduce(buf, &what)?,
                ReduceDtype::Bf16 => tch::no_grad(|| {
                    // Converted, reduced and copied back on the default stream, in order.
                    let low = buf.to_kind(tch::Kind::BFloat16);
                    self.all_reduce(&low, &what)?;
                    buf.shallow_clone().copy_(&low);
                    Ok::<(), DistError>(())
                })?,
            }
            if b == last {
                // The average of the flags is above zero when any rank raised it.
                any_stop = crate::host::scalar(&buf.get(n))
                    .map_err(|e| err(format!("reading the stop flag: {e}")))?
                    > 0.0;
            }
        }
        Ok(any_stop)
    }
}

impl Drop for NcclGradSync {
    fn drop(&mut self) {
        // A clean end calls `shutdown`, which destroys the communicator after its work. Dropped
        // without it means an error is on its way out: ncclCommDestroy would wait for
        // outstanding collectives that a failed peer never joins, so the communicator is aborted
        // instead (ncclCommAbort does not wait), and the error is printed and the job aborted
        // right after.
        if !self.comm.is_null() {
            // SAFETY: the communicator was initialised in `new` and is released once.
            let _ = unsafe { nr::comm_abort(self.comm) };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Needs no GPU: the wheel's NCCL loads on any Linux machine. `ci/setup.sh` makes the link.
    #[test]
    fn the_backend_loads_the_nccl_libtorch_loads_and_only_that_one() {
        let lib = nccl_library().unwrap();
        assert!(
            lib.path.ends_with("nvidia/nccl/lib/libnccl.so.2"),
            "cudarc loaded {}",
            lib.path.display()
        );
        assert!(lib.version >= 20_000, "{}", lib.version);
        assert!(
            lib.version_string().starts_with("2."),
            "{}",
            lib.version_string()
        );
        // libtorch_cuda (loaded with libtorch at start) and cudarc share one copy.
        assert_eq!(nccl_copies(), vec![lib.path.clone()]);
        assert_eq!(lib.copies, 1);
    }
}
