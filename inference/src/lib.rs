//! What an inference box runs: lip-syncing videos with a trained model (`generate`: a reference
//! video's face speaking new audio, one clip or a list split across ranks by the launcher's
//! environment) and scoring them (`eval`: PSNR/SSIM, LSE-C/D with SyncNet, LPIPS, WER, the
//! mouth opening), plus the `syncdiff` tool around them.
//!
//! No MPI here: a list is split by the launcher's variables (`syncdiff_runtime::launch`), so
//! generation runs on a machine without MPI and still splits a list under `mpirun`. Weights come
//! from checkpoints and bundles (`syncdiff-checkpoint`), frames and faces from
//! `syncdiff-dataprep` (ffmpeg, dlib).

pub mod eval;
pub mod generate;
