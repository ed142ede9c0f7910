//! LRS2 -> Zarr shard stores of autoencoder latents and filterbank features.
//!
//! This crate owns the data format: it writes the stores and provides the reader the trainer uses.
//! Today: the `audio` module (filterbank features). The synthetic LRS2-layout data set, the ingest
//! and the reader arrive with the dataprep issue.

pub mod audio;
