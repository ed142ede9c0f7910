//! The data set: what training reads and data preparation writes, without the tools that make
//! it (no ffmpeg, no face front-end): `store` (Zarr v3 shard stores of latents, masked latents,
//! mel rows and face records; the manifest; the settings that shaped them, `StoreMeta`; the
//! clip-by-clip writer and the reader), `audio` (the stacked log-filterbank features, "mel
//! groups"), `publish` (a data set in object storage: shards uploaded as they finish, the
//! manifest last and verified).

pub mod audio;
pub mod publish;
pub mod store;
