//! Data parallelism applied to a rank's flat gradient buckets (as torchtitan's `parallelize`
//! applies it to a model): nothing on one rank; otherwise an all-reduce after the backward pass
//! (NCCL on GPUs, MPI on CPUs), or overlapped with it bucket by bucket (`dist.overlap`: NCCL on
//! a stream of its own, or MPI on a communication thread).

use std::time::Duration;

use syncdiff_model::config::{Config, DistBackend};
use tch::{Device, Tensor};

use crate::dist::{
    BucketReducer, DistError, GradSync, MpiGradSync, MpiThread, NcclGradSync, NcclStream, Overlap,
    Runtime, Watchdog,
};
use crate::error::TrainError;
use crate::optim::Flat;

/// How gradients are averaged: after the backward pass, or overlapped with it.
pub(crate) enum Reduce<'a> {
    /// One rank: nothing to average with.
    Alone,
    /// All buckets after the whole backward pass.
    After(Box<dyn GradSync + 'a>),
    /// Each bucket as soon as its gradients are final (`dist.overlap`).
    Overlapped(Overlap),
}

/// The gradient averaging of this rank for `backend` and `config.dist` (its start-up
/// collectives run under the watchdog: a rank that never joins ends the job, not a hang).
pub(crate) fn parallelize<'a>(
    config: &Config,
    rt: &'a Runtime,
    device: Device,
    backend: DistBackend,
    flat: &Flat,
    dog: &Watchdog,
) -> Result<Reduce<'a>, TrainError> {
    if rt.world_size() == 1 {
        return Ok(Reduce::Alone);
    }
    let timeout = Duration::from_secs(config.dist.collective_timeout_s);
    let nccl = || -> Result<NcclGradSync, TrainError> {
        // The unique-id broadcast and ncclCommInitRank block until every rank joins: a wrong
        // NCCL_SOCKET_IFNAME would otherwise hang until the job's time limit.
        let what = "NCCL start-up (unique id broadcast, ncclCommInitRank)";
        let _w = dog.watch(what, 0, timeout);
        let mut sync = NcclGradSync::new(rt, device)?;
        sync.dtype = config.dist.reduce_dtype;
        Ok(sync)
    };
    if !config.dist.overlap {
        return Ok(Reduce::After(if backend == DistBackend::Nccl {
            Box::new(nccl()?)
        } else {
            let mut sync = MpiGradSync::new(rt.comm());
            sync.dtype = config.dist.reduce_dtype;
            Box::new(sync)
        }));
    }
    let buffers = || {
        flat.reduce_buffers()
            .iter()
            .map(Tensor::shallow_clone)
            .collect()
    };
    let bad = |message: String| DistError::Backend {
        rank: rt.rank(),
        message,
    };
    let reducer: Box<dyn BucketReducer> = if backend == DistBackend::Nccl {
        Box::new(NcclStream::new(nccl()?, buffers(), device).map_err(bad)?)
    } else {
        let _w = dog.watch("communicator duplication", 0, timeout);
        let dtype = config.dist.reduce_dtype;
        Box::new(MpiThread::new(rt.comm(), buffers(), rt.thread_multiple(), dtype).map_err(bad)?)
    };
    Ok(Reduce::Overlapped(Overlap::new(flat, reducer, rt.rank())?))
}
