//! Data preparation: LRS2 or a folder of videos -> a SyncDiff data set (the format itself, its
//! reader and writer, the filterbank and publishing are in `syncdiff-dataset`; what every host
//! shares in `syncdiff-runtime`).
//!
//! Modules: `ingest` (the run: decoding threads -> encoder -> shards, resumable, over ranks),
//! `clip` (a clip's settings, decoded form, rejections and checks), `pipeline` (one clip of any
//! layout -> latents and features), `layout` (where clips are),
//! `face` (the face front-end: dlib detection, tracking, crop and mask), `video` (ffmpeg I/O,
//! streamed), `synth` (the synthetic LRS2-layout data set), `outpath` (output paths that never
//! clobber what they do not own).

pub mod clip;
pub mod face;
pub mod ingest;
pub mod layout;
pub mod outpath;
pub mod pipeline;
mod segments;
pub mod synth;
pub mod video;
