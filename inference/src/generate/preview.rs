//! `OUT.preview.png` (`syncdiff generate --preview`): the middle output frame's reference, the
//! output, and their difference x4, side by side, each scaled to at most 360 rows.

use std::path::{Path, PathBuf};

use syncdiff_dataprep::face;
use syncdiff_dataprep::video;

use super::{ping_pong, GenerateError, Prepared, FPS};

/// Frame `k` of a video at 25 fps, as generation read it.
fn frame_at(path: &Path, k: usize) -> Result<(Vec<u8>, u32, u32), GenerateError> {
    let info = video::probe(path)?;
    let mut rd =
        video::FrameReader::open(path, info.width, info.height, Some(f64::from(FPS)), None)?;
    let mut buf = vec![0u8; rd.frame_len()];
    for _ in 0..=k {
        if !rd.next_frame(&mut buf)? {
            return Err(GenerateError::Input {
                path: path.to_path_buf(),
                message: format!("fewer than {} frames", k + 1),
            });
        }
    }
    Ok((buf, info.width, info.height))
}

/// Writes the preview of a finished clip beside its output; returns the PNG's path.
pub fn preview(p: &Prepared) -> Result<PathBuf, GenerateError> {
    let k = p.frames / 2;
    let (before, w, h) = frame_at(&p.job.video, ping_pong(k, p.available))?;
    let (after, ow, oh) = frame_at(&p.job.out, k)?;
    if (ow, oh) != (w, h) {
        return Err(GenerateError::Input {
            path: p.job.out.clone(),
            message: format!("the output is {ow}x{oh}, the reference {w}x{h}"),
        });
    }
    let diff: Vec<u8> = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (u32::from(a.abs_diff(*b)) * 4).min(255) as u8)
        .collect();
    let rows = 360u32.min(h);
    let cols = (u64::from(w) * u64::from(rows) / u64::from(h)).max(1) as u32;
    let k = w as f32 / cols as f32;
    let scale = face::Affine([k, 0.0, 0.0, 0.0, h as f32 / rows as f32, 0.0]);
    let panels: Vec<Vec<u8>> = [&before, &after, &diff]
        .iter()
        .map(|f| face::warp(f, w, h, &scale, cols, rows))
        .collect();
    let line = (cols * 3) as usize;
    let mut strip = Vec::with_capacity(line * 3 * rows as usize);
    for y in 0..rows as usize {
        for panel in &panels {
            strip.extend_from_slice(&panel[y * line..(y + 1) * line]);
        }
    }
    let name = p
        .job
        .out
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let png = p.job.out.with_file_name(format!("{name}.preview.png"));
    video::write_png(&png, &strip, cols * 3, rows)?;
    Ok(png)
}
