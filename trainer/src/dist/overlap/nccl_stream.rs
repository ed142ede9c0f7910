//! The NCCL backend of the overlap: each bucket is averaged on a communication stream of its
//! own, so the all-reduce of the last layers' gradients runs while the compute stream goes on
//! with the backward pass of the layers before them.
//!
//! Stream dependencies (libtorch queues its kernels on the legacy default stream, see
//! `dist::nccl`):
//! - when a bucket's last gradient accumulation is queued (its hook ran), an event is recorded
//!   on the default stream; the communication stream waits for it before the bucket's
//!   all-reduce, so the reduction reads final gradients;
//! - the communication stream is created non-blocking: a blocking stream would synchronise with
//!   the legacy default stream implicitly and serialise the two again;
//! - at the end of the pass an event on the communication stream after the last all-reduce is
//!   waited for by the default stream, so clipping and the optimizer read reduced gradients;
//! - the buffers live as long as the trainer (never freed while a reduction may read them), so
//!   the caching allocator needs no `record_stream`.
//!
//! Nothing here has run on a GPU yet: `launch/gpu-check.sh` compares the overlapped parameters
//! with the non-overlapped ones on the first GPU node.

use cudarc::driver::{result as dr, sys as ds};
use cudarc::nccl::sys as ns;
use syncdiff_model::config::ReduceDtype;
use tch::Tensor;

use super::BucketReducer;
use crate::dist::grad_sync::check_buffers;
use crate::dist::NcclGradSync;

/// Buckets averaged on a non-blocking stream after events on the compute stream.
pub struct NcclStream {
    sync: NcclGradSync,
    buffers: Vec<Tensor>,
    stream: ds::CUstream,
    /// Per bucket: its gradients are final on the compute stream.
    ready: Vec<ds::CUevent>,
    /// Every reduction of the pass is done (on the communication stream).
    done: ds::CUevent,
    issued: usize,
    /// `dist.reduce_dtype: bf16`: per bucket, its bfloat16 copy on the wire during the pass.
    low: Vec<Option<Tensor>>,
}

// SAFETY: the stream and events are plain driver handles, usable from any thread with the
// device's context current (bound before each use); the NCCL communicator is Send (see
// `NcclGradSync`); the overlap calls this behind one lock.
unsafe impl Send for NcclStream {}

impl std::fmt::Debug for NcclStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclStream")
            .field("buckets", &self.buffers.len())
            .finish_non_exhaustive()
    }
}

fn cuda(what: &str, e: dr::DriverError) -> String {
    format!("{what}: {e:?}")
}

impl NcclStream {
    /// The backend on `sync`'s communicator for the gradient `buffers` (contiguous float32 on
    /// `device`, the last with the stop slot).
    pub fn new(
        sync: NcclGradSync,
        buffers: Vec<Tensor>,
        device: tch::Device,
    ) -> Result<Self, String> {
        check_buffers(&buffers, device)?;
        sync.context()
            .bind_to_thread()
            .map_err(|e| cuda("binding the CUDA context", e))?;
        let stream = dr::stream::create(dr::stream::StreamKind::NonBlocking)
            .map_err(|e| cuda("creating the all-reduce stream", e))?;
        let event = || {
            dr::event::create(ds::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(|e| cuda("creating a CUDA event", e))
        };
        let ready = (0..buffers.len())
            .map(|_| event())
            .collect::<Result<_, _>>()?;
        let done = event()?;
        let low = buffers.iter().map(|_| None).collect();
        Ok(Self {
            sync,
            buffers,
            stream,
            ready,
            done,
            issued: 0,
            low,
        })
    }

    fn bind(&self) -> Result<(), String> {
        self.sync
            .context()
            .bind_to_thread()
            .map_err(|e| cuda("binding the CUDA context", e))
    }
}

impl BucketReducer for NcclStream {
    fn ready(&mut self, bucket: usize) -> Result<(), String> {
        self.bind()?;
        let ev = *self.ready.get(bucket).ok_or("no such gradient bucket")?;
        if self.sync.dtype == ReduceDtype::Bf16 {
            // Converted on the default stream, before the event the reduction waits for.
            self.low[bucket] = Some(tch::no_grad(|| {
                self.buffers[bucket].to_kind(tch::Kind::BFloat16)
            }));
        }
        // SAFETY: a live event of this context, recorded on the default stream.
        unsafe { dr::event::record(ev, std::ptr::null_mut()) }
            .map_err(|e| cuda("recording a gradient-ready event", e))
    }

    fn launch(&mut self, bucket: usize) -> Result<(), String> {
        self.bind()?;
        let ev = *self.ready.get(bucket).ok_or("no such gradient bucket")?;
        // SAFETY: live stream and event of this context.
        unsafe {
            dr::stream::wait_event(
                self.stream,
                ev,
                ds::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| cuda("ordering the all-reduce after the gradients", e))?;
        let what = if bucket + 1 == self.buffers.len() {
            format!("gradient bucket {bucket} with the stop flag")
        } else {
            format!("gradient bucket {bucket}")
        };
        // SAFETY: the buffer is contiguous float32 on this device (checked in `new`) and lives
        // as long as the trainer (its bfloat16 copy until `wait` widened it back); the stream waits for the event after its gradients, and the
        // default stream waits for the stream in `wait` before anything reads them.
        let wire = self.low[bucket].as_ref().unwrap_or(&self.buffers[bucket]);
        unsafe {
            self.sync
                .all_reduce_on(wire, &what, self.stream as ns::cudaStream_t)
        }
        .map_err(|e| e.to_string())?;
        self.issued += 1;
        Ok(())
    }

    fn wait(&mut self) -> Result<usize, String> {
        self.bind()?;
        // SAFETY: live event and streams of this context.
        unsafe {
            dr::event::record(self.done, self.stream)
                .and_then(|()| {
                    dr::stream::wait_event(
                        std::ptr::null_mut(),
                        self.done,
                        ds::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                    )
                })
                .map_err(|e| cuda("ordering the optimizer after the all-reduces", e))?;
        }
        // bfloat16 on the wire: widened back on the default stream, after the wait above; the
        // copies are freed there too, so the caching allocator reuses them only after it.
        for (buf, low) in self.buffers.iter().zip(&mut self.low) {
            if let Some(low) = low.take() {
                tch::no_grad(|| {
                    buf.shallow_clone().copy_(&low);
                });
            }
        }
        Ok(std::mem::take(&mut self.issued))
    }

    fn shutdown(&mut self) -> Result<(), String> {
        self.bind()?;
        // SAFETY: a live stream of this context.
        unsafe { dr::stream::synchronize(self.stream) }
            .map_err(|e| cuda("waiting for the all-reduce stream", e))?;
        crate::dist::GradSync::shutdown(&mut self.sync).map_err(|e| e.to_string())
    }
}

impl Drop for NcclStream {
    fn drop(&mut self) {
        if self.bind().is_err() {
            return;
        }
        // SAFETY: created in `new`, destroyed once; the driver defers the release of a stream
        // or event with queued work until that work completes.
        unsafe {
            for &ev in &self.ready {
                let _ = dr::event::destroy(ev);
            }
            let _ = dr::event::destroy(self.done);
            let _ = dr::stream::destroy(self.stream);
        }
    }
}
