//! The data set: what training reads and data preparation writes, without the tools that make
//! it (no ffmpeg, no face front-end): `shards` (Zarr v3 shard stores of latents, masked latents,
//! mel rows and face records; the manifest; the settings that shaped them, `StoreMeta`; the
//! clip-by-clip writer and the reader), `audio` (the stacked log-filterbank features, "mel
//! groups"), `publish` (a data set in object storage: shards uploaded as they finish, the
//! manifest last and verified), `autoencoder` (the network that defines the latents, loaded as
//! configured), `remote` (a data set on object storage read through a node-local cache).

pub mod audio;
pub mod autoencoder;
pub mod publish;
pub mod remote;
pub mod shards;
