//! The MPI backend of the overlap: a communication thread that reduces buckets in the order
//! they are handed to it, while the backward pass runs on the caller's thread.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use mpi::topology::{Communicator, SimpleCommunicator};
use syncdiff_model::config::ReduceDtype;
use tch::Tensor;

use super::BucketReducer;
use crate::dist::grad_sync::{check_buffers, reduce_bucket};

/// A communicator the communication thread owns.
struct Comm(SimpleCommunicator);

// SAFETY: MPI is initialised with MPI_THREAD_MULTIPLE (`MpiThread::new` refuses otherwise), and
// the duplicate communicator is used by the communication thread only.
unsafe impl Send for Comm {}

/// Reduces buckets on a thread of its own, on a duplicate of the world communicator (so its
/// collectives never match the main thread's).
pub struct MpiThread {
    to_thread: Option<Sender<usize>>,
    done: Receiver<Result<(), String>>,
    thread: Option<JoinHandle<()>>,
    /// Reductions handed over and not yet waited for.
    outstanding: usize,
    /// Collectives issued in this pass.
    issued: usize,
}

impl std::fmt::Debug for MpiThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiThread")
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

impl MpiThread {
    /// Starts the thread for the gradient `buffers` (`Flat::reduce_buffers`: contiguous float32
    /// on the CPU, the last with the stop slot). Duplicating `comm` is a collective: every rank
    /// calls this at the same point. `thread_multiple`: MPI granted MPI_THREAD_MULTIPLE;
    /// `dtype`: the element type on the wire.
    pub fn new(
        comm: &SimpleCommunicator,
        buffers: Vec<Tensor>,
        thread_multiple: bool,
        dtype: ReduceDtype,
    ) -> Result<Self, String> {
        if !thread_multiple {
            return Err(
                "dist.overlap needs an MPI with MPI_THREAD_MULTIPLE (the all-reduce runs on a \
                 thread of its own) and this one does not grant it: set dist.overlap: false"
                    .into(),
            );
        }
        check_buffers(&buffers, tch::Device::Cpu)?;
        let dup = Comm(comm.duplicate());
        let (to_thread, from_main) = channel::<usize>();
        let (to_main, done) = channel();
        let last = buffers.len() - 1;
        let thread = std::thread::Builder::new()
            .name("syncdiff-allreduce".into())
            .spawn(move || {
                let dup = dup;
                for b in from_main {
                    let r = match buffers.get(b) {
                        Some(buf) => reduce_bucket(&dup.0, buf, b == last, true, dtype)
                            .map_err(|m| format!("gradient bucket {b}: {m}")),
                        None => Err(format!("no gradient bucket {b}")),
                    };
                    if to_main.send(r).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start the all-reduce thread: {e}"))?;
        Ok(Self {
            to_thread: Some(to_thread),
            done,
            thread: Some(thread),
            outstanding: 0,
            issued: 0,
        })
    }
}

impl BucketReducer for MpiThread {
    fn launch(&mut self, bucket: usize) -> Result<(), String> {
        let tx = self
            .to_thread
            .as_ref()
            .ok_or("the all-reduce thread was shut down")?;
        tx.send(bucket)
            .map_err(|_| "the all-reduce thread ended".to_string())?;
        self.outstanding += 1;
        self.issued += 1;
        Ok(())
    }

    fn wait(&mut self) -> Result<usize, String> {
        let mut first = None;
        while self.outstanding > 0 {
            match self.done.recv() {
                Ok(r) => {
                    self.outstanding -= 1;
                    if let Err(e) = r {
                        first.get_or_insert(e);
                    }
                }
                Err(_) => return Err("the all-reduce thread ended".into()),
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut self.issued)),
        }
    }

    fn shutdown(&mut self) -> Result<(), String> {
        self.to_thread = None;
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| "the all-reduce thread panicked".to_string())?;
        }
        Ok(())
    }
}

impl Drop for MpiThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current bucket. On an error path a
        // reduction may still be waiting for a failed peer: then the thread is left to the
        // process's end (the job is being aborted) instead of joined.
        self.to_thread = None;
        if self.outstanding == 0 {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}
