//! What every SyncDiff host shares, whichever job it runs (data preparation, training,
//! generation): `objstore` (object storage: S3, GCS, Azure and local paths behind one API, with
//! the conditional writes the checkpoint lease needs), `ranks` (where this process runs in a
//! launch: the launcher's variables), `device` (which device it computes on: `--device`),
//! `progress` (the one progress bar), `rng`
//! (counter-based randomness: the training RNG), `hash` (streamed sha256 of files).
//!
//! No face front-end, no MPI, no data format here: a crate every binary can link.

pub mod device;
pub mod hash;
pub mod objstore;
pub mod progress;
pub mod ranks;
pub mod rng;
