//! The gradient all-reduce overlapped with the backward pass, as DDP does it: a hook on every
//! trained parameter (csrc/hooks.cpp, libtorch's post-accumulate-grad hook) reports when its
//! gradient is final; when every gradient of a bucket is, the bucket is reduced while the
//! backward pass goes on with the layers before it.
//!
//! - Order: buckets start in one fixed order on every rank ([`Schedule`]); the first step uses
//!   reverse bucket order, after it every rank adopts the order in which rank 0's buckets
//!   completed ([`Overlap::adopt_order`]), so later steps start buckets as the backward pass
//!   finishes them. The order only moves the start of each bucket's reduction: the values are
//!   those of the non-overlapped path, bit for bit.
//! - Accumulation: only the last micro-batch's backward is armed ([`Overlap::arm`]); earlier
//!   ones accumulate locally (DDP's `no_sync`), so a step sends one set of all-reduces.
//! - Backends ([`BucketReducer`]): MPI on CPUs reduces on a communication thread of its own
//!   ([`MpiThread`], a duplicate of the world communicator); NCCL on GPUs queues each bucket on
//!   a stream of its own after an event on the compute stream ([`NcclStream`]).
//! - The stop flag of preemption rides in the last buffer as on the non-overlapped path.

mod nccl_stream;
mod schedule;
mod thread;

pub use nccl_stream::NcclStream;
pub use schedule::{Arrival, Schedule};
pub use thread::MpiThread;

use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mpi::topology::{Communicator, SimpleCommunicator};
use tch::Tensor;

use super::DistError;
use crate::optim::Flat;

unsafe extern "C" {
    fn syncdiff_set_grad_ready_hook(
        tensor: *const torch_sys::C_tensor,
        f: extern "C" fn(*mut c_void, usize),
        ctx: *mut c_void,
        index: usize,
        msg: *mut c_char,
        len: usize,
    ) -> i32;
    fn syncdiff_clear_grad_ready_hook(
        tensor: *const torch_sys::C_tensor,
        msg: *mut c_char,
        len: usize,
    ) -> i32;
}

/// How a backend reduces buckets during the backward pass. Called with the overlap's lock held,
/// from the thread the gradient hooks run on (the caller's thread on CPU, libtorch's device
/// thread on GPUs) or from the thread that ends the pass.
pub trait BucketReducer: Send {
    /// Every gradient of `bucket` is final (on the device: its last accumulation is queued).
    fn ready(&mut self, _bucket: usize) -> Result<(), String> {
        Ok(())
    }
    /// Starts reducing `bucket` (buckets come in the schedule's order).
    fn launch(&mut self, bucket: usize) -> Result<(), String>;
    /// Waits until every started reduction is done (MPI), or makes the compute stream wait for
    /// them (NCCL); returns how many collectives the pass issued.
    fn wait(&mut self) -> Result<usize, String>;
    /// The clean end of training (every rank calls it).
    fn shutdown(&mut self) -> Result<(), String> {
        Ok(())
    }
}

struct Inner {
    schedule: Schedule,
    reducer: Box<dyn BucketReducer>,
    error: Option<String>,
}

impl Inner {
    /// Passes what an arrival changed to the backend; the first error is kept for `finish`.
    fn apply(&mut self, a: &Arrival) {
        let r = a
            .ready
            .map_or(Ok(()), |b| self.reducer.ready(b))
            .and_then(|()| a.launch.iter().try_for_each(|&b| self.reducer.launch(b)));
        if let Err(e) = r {
            self.error.get_or_insert(e);
        }
    }
}

/// The state the hooks reach through their context pointer.
struct Shared(Mutex<Inner>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The hook's entry point: parameter `index`'s gradient is final for this pass.
extern "C" fn grad_ready(ctx: *mut c_void, index: usize) {
    // SAFETY: `ctx` is the `Shared` of a live `Overlap`: it clears every hook before it drops
    // its reference, and the `Arc` keeps the address fixed.
    let shared = unsafe { &*(ctx as *const Shared) };
    // A panic must not unwind into libtorch's C++; it is kept as the pass's error instead.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut inner = shared.lock();
        let a = inner.schedule.arrived(index);
        inner.apply(&a);
    }));
    if caught.is_err() {
        shared
            .lock()
            .error
            .get_or_insert_with(|| format!("the gradient hook of parameter {index} panicked"));
    }
}

/// Gradient hooks on a [`Flat`]'s parameters driving a [`BucketReducer`] backend.
pub struct Overlap {
    shared: Arc<Shared>,
    /// The parameters carrying a hook (cleared on drop).
    params: Vec<Tensor>,
    /// The gradient buffers (the last with the stop slot).
    buffers: Vec<Tensor>,
    rank: i32,
    adopted: bool,
}

impl std::fmt::Debug for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlap")
            .field("rank", &self.rank)
            .field("order", &self.order())
            .finish_non_exhaustive()
    }
}

impl Overlap {
    /// Installs a gradient hook on each of `flat`'s parameters, reducing its buckets with
    /// `reducer`. `rank` names this rank in errors.
    pub fn new(flat: &Flat, reducer: Box<dyn BucketReducer>, rank: i32) -> Result<Self, DistError> {
        let buffers: Vec<Tensor> = flat
            .reduce_buffers()
            .iter()
            .map(Tensor::shallow_clone)
            .collect();
        let shared = Arc::new(Shared(Mutex::new(Inner {
            schedule: Schedule::new(flat.groups(), buffers.len()),
            reducer,
            error: None,
        })));
        let mut overlap = Self {
            shared,
            params: Vec::new(),
            buffers,
            rank,
            adopted: false,
        };
        let ctx = Arc::as_ptr(&overlap.shared) as *mut c_void;
        for (i, (p, name)) in flat.params().iter().zip(flat.names()).enumerate() {
            // SAFETY: `p` is a live tensor; the context outlives the hook (see `grad_ready`).
            crate::shim::call(|msg, len| unsafe {
                syncdiff_set_grad_ready_hook(p.as_ptr(), grad_ready, ctx, i, msg, len)
            })
            .map_err(|m| overlap.err(format!("gradient hook on `{name}`: {m}")))?;
            overlap.params.push(p.shallow_clone());
        }
        Ok(overlap)
    }

    fn err(&self, message: String) -> DistError {
        DistError::Backend {
            rank: self.rank,
            message,
        }
    }

    /// The bucket launch order.
    pub fn order(&self) -> Vec<usize> {
        self.shared.lock().schedule.order().to_vec()
    }

    /// The order buckets completed in and the order they were started in, in the last pass.
    pub fn logs(&self) -> (Vec<usize>, Vec<usize>) {
        let inner = self.shared.lock();
        (
            inner.schedule.ready_log().to_vec(),
            inner.schedule.launch_log().to_vec(),
        )
    }

    /// Arms the next backward pass (the last micro-batch of a step) with this rank's stop flag.
    pub fn arm(&mut self, stop: bool) -> Result<(), DistError> {
        if let Some(last) = self.buffers.last() {
            let n = last.numel() as i64 - 1;
            tch::no_grad(|| {
                let _ = last.narrow(0, n, 1).fill_(if stop { 1.0 } else { 0.0 });
            });
        }
        let mut inner = self.shared.lock();
        let a = inner.schedule.arm();
        inner.apply(&a);
        Ok(())
    }

    /// Ends the armed pass after its backward returned: completes the buckets it did not reach,
    /// starts the rest, waits for every reduction; returns whether any rank raised `stop` and
    /// the number of collectives issued.
    pub fn finish(&mut self) -> Result<(bool, usize), DistError> {
        let issued = {
            let mut inner = self.shared.lock();
            let (late, launch) = inner.schedule.finish().map_err(|m| self.err(m))?;
            for b in late {
                inner.apply(&Arrival {
                    ready: Some(b),
                    launch: Vec::new(),
                });
            }
            inner.apply(&Arrival {
                ready: None,
                launch,
            });
            let waited = inner.reducer.wait();
            if let Some(e) = inner.error.take() {
                return Err(self.err(e));
            }
            waited.map_err(|m| self.err(m))?
        };
        let stop = match self.buffers.last() {
            Some(last) => {
                crate::host::scalar(&last.get(last.numel() as i64 - 1))
                    .map_err(|e| self.err(format!("reading the stop flag: {e}")))?
                    > 0.0
            }
            None => false,
        };
        Ok((stop, issued))
    }

    /// After the first pass, once: every rank takes the order in which rank 0's buckets
    /// completed as the launch order (a collective). Returns whether the order changed.
    pub fn adopt_order(&mut self, comm: &SimpleCommunicator) -> Result<bool, DistError> {
        use mpi::collective::Root;
        if self.adopted {
            return Ok(false);
        }
        self.adopted = true;
        let mut inner = self.shared.lock();
        let mut order: Vec<u64> = inner
            .schedule
            .ready_log()
            .iter()
            .map(|&b| b as u64)
            .collect();
        // Every rank's log lists every bucket once, so the lengths agree.
        order.resize(inner.schedule.buckets(), 0);
        comm.process_at_rank(0).broadcast_into(&mut order[..]);
        let order: Vec<usize> = order.into_iter().map(|b| b as usize).collect();
        let changed = order != inner.schedule.order();
        inner
            .schedule
            .set_order(order)
            .map_err(|m| self.err(format!("rank 0's bucket order: {m}")))?;
        Ok(changed)
    }

    /// The clean end of training: releases the backend.
    pub fn shutdown(&mut self) -> Result<(), DistError> {
        let r = self.shared.lock().reducer.shutdown();
        r.map_err(|m| self.err(m))
    }
}

impl Drop for Overlap {
    fn drop(&mut self) {
        for p in &self.params {
            // SAFETY: `p` is a live tensor; clearing leaves no hook pointing at `shared`.
            let _ = crate::shim::call(|msg, len| unsafe {
                syncdiff_clear_grad_ready_hook(p.as_ptr(), msg, len)
            });
        }
    }
}

#[cfg(test)]
mod tests;
