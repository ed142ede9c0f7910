//! A clip through the face front-end: the segments that follow one face become the stored
//! clips (a segment longer than `data.face.max_segment_s` in equal parts), each frame cropped to
//! the model's square and masked from the face; the rest is rejected with reason `no_face`.
//! Streamed: memory holds one part, whatever the recording's length.
//!
//! A clip kept whole keeps its id; the parts of a split clip are `<id>#<first>-<end>` (frame
//! numbers of the source clip, end exclusive), so a part can be traced back to its frames.

use std::ops::Range;
use std::path::Path;

use syncdiff_model::config::FaceConfig;

use crate::clip::{
    check_pass, check_stream, clip_file, decode_failure, reject, ClipSettings, DecodedClip,
    Rejection,
};
use crate::face::{mouth_mask, CropTransform, FrontEnd};
use crate::video::{self, AvStream};
use syncdiff_dataset::audio::{mel_group_rows, LogFbank};
use syncdiff_dataset::shards::FaceRecord;

/// The source clip of a stored or rejected part: `id` without a trailing `#<first>-<end>`.
pub(crate) fn source_id(id: &str) -> &str {
    match id.rsplit_once('#') {
        Some((base, range))
            if range
                .split_once('-')
                .is_some_and(|(a, b)| a.parse::<usize>().is_ok() && b.parse::<usize>().is_ok()) =>
        {
            base
        }
        _ => id,
    }
}

/// What becomes of a run of a clip's frames.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    /// Stored as a clip under this id.
    Keep(String, Range<usize>),
    /// Rejected.
    Reject(Rejection),
}

/// The parts of a clip of `frames` frames whose face segments are `segments`: the frames
/// without a face and the segments shorter than `min_frames` rejected (`no_face`), the others
/// kept, each cut into equal parts of at most `max_frames`. A clip kept whole keeps its id.
fn plan(
    id: &str,
    frames: usize,
    segments: &[Range<usize>],
    min_frames: usize,
    max_frames: usize,
    cfg: &FaceConfig,
    fps: f64,
) -> Vec<Piece> {
    let max_frames = max_frames.max(1);
    let whole = segments.len() == 1 && segments[0] == (0..frames) && frames <= max_frames;
    let part_id = |r: &Range<usize>| {
        if whole {
            id.to_string()
        } else {
            format!("{id}#{}-{}", r.start, r.end)
        }
    };
    let gap = |r: Range<usize>| {
        Piece::Reject(reject(
            &format!("{id}#{}-{}", r.start, r.end),
            "no_face",
            "no tracked face in these frames".to_string(),
        ))
    };
    let mut out = Vec::new();
    let mut covered = 0;
    for seg in segments {
        if seg.start > covered {
            out.push(gap(covered..seg.start));
        }
        covered = seg.end;
        if seg.len() < min_frames {
            out.push(Piece::Reject(reject(
                &part_id(seg),
                "no_face",
                format!(
                    "a face for {:.2} s, shorter than data.face.min_segment_s {}",
                    seg.len() as f64 / fps,
                    cfg.min_segment_s
                ),
            )));
            continue;
        }
        let n = seg.len().div_ceil(max_frames);
        for k in 0..n {
            let r = seg.start + seg.len() * k / n..seg.start + seg.len() * (k + 1) / n;
            out.push(Piece::Keep(part_id(&r), r));
        }
    }
    if covered < frames {
        out.push(gap(covered..frames));
    }
    out
}

/// A clip through the face front-end in two streamed passes, so that memory does not grow with
/// its length: the first decodes frames and audio (to a scratch file) and tracks the face; the
/// second decodes the frames again and crops each part as its frames arrive. Every part (a
/// stored clip, or a rejected run of frames) goes to `send` as soon as it is complete; `send`
/// returning false stops the work. Returns the scene cuts found, or the rejection of the whole
/// clip, which replaces whatever parts were sent (a clip found damaged at its end).
pub(crate) fn stream_face_clip(
    root: &Path,
    id: &str,
    cfg: &FaceConfig,
    s: &ClipSettings,
    fb: &LogFbank,
    send: &mut dyn FnMut(Result<DecodedClip, Rejection>) -> bool,
) -> Result<usize, Rejection> {
    let path = clip_file(root, id, s)?;
    // dlib's detectors are per thread; the landmark model is shared (loaded once).
    let fe = FrontEnd::new(cfg).map_err(|e| reject(id, "face_model", e.to_string()))?;
    let info = video::probe(&path).map_err(|e| decode_failure(id, &e))?;
    let resample = s.layout.resamples().then_some(s.fps);
    check_stream(
        id,
        &path,
        &info.pix_fmt,
        resample.unwrap_or(info.fps),
        info.has_audio,
        s,
    )?;
    let (w, h) = (info.width, info.height);
    let undecodable = |e: String| reject(id, "undecodable", e);
    // Pass 1: the face track and the audio.
    let mut pass = AvStream::open(&path, w, h, None, s.sample_rate, resample)
        .map_err(|e| decode_failure(id, &e))?;
    let mut tracker = fe.tracker(w, h, s.fps);
    let mut frame = vec![0u8; pass.frame_len()];
    // One frame kept for the no-face message (the last at a power-of-two index).
    let mut sample = Vec::new();
    let mut n = 0usize;
    while pass
        .next_frame(&mut frame)
        .map_err(|e| decode_failure(id, &e))?
    {
        tracker
            .push(&frame)
            .map_err(|e| undecodable(e.to_string()))?;
        if n.is_power_of_two() || n == 0 {
            sample.clone_from(&frame);
        }
        n += 1;
    }
    let end = pass.finish().map_err(|e| decode_failure(id, &e))?;
    let mut audio = end.audio;
    let audio_s = audio.samples() as f64 / f64::from(s.sample_rate);
    check_pass(id, n, audio_s, end.duration_s, &end.errors, s)?;
    let faces = tracker.finish();
    let cuts = faces.cuts.len();
    if faces.segments.is_empty() {
        return Err(reject(id, "no_face", fe.no_face_message(&sample, w, h, n)));
    }
    let min_frames = (cfg.min_segment_s * s.fps).ceil() as usize;
    let max_frames = (cfg.max_segment_s * s.fps).floor() as usize;
    let pieces = plan(id, n, &faces.segments, min_frames, max_frames, cfg, s.fps);
    // Pass 2: crops, part by part.
    let mut reader = video::FrameReader::open(&path, w, h, resample, None)
        .map_err(|e| decode_failure(id, &e))?;
    let mut next = 0usize;
    for piece in pieces {
        let (pid, range) = match piece {
            Piece::Reject(r) => {
                if !send(Err(r)) {
                    return Ok(cuts);
                }
                continue;
            }
            Piece::Keep(pid, range) => (pid, range),
        };
        let side = s.resolution as usize;
        let mut rgb = Vec::with_capacity(range.len() * side * side * 3);
        let mut masks = Vec::with_capacity(range.len() * side * side);
        let mut records = Vec::with_capacity(range.len());
        while next < range.end {
            if !reader
                .next_frame(&mut frame)
                .map_err(|e| decode_failure(id, &e))?
            {
                return Err(undecodable(format!(
                    "{}: the video ended at frame {next} of {n} on the second reading",
                    path.display()
                )));
            }
            if next >= range.start {
                let Some(face) = &faces.frames[next] else {
                    unreachable!("frame {next} of a segment without a face")
                };
                let crop = CropTransform::new(cfg, &face.rect, w, h, s.resolution);
                rgb.extend(crop.warp(&frame, w, h));
                masks.extend(mouth_mask(
                    cfg,
                    s.mask_fraction,
                    &crop,
                    &face.rect,
                    face.landmarks.as_ref(),
                ));
                let r = &face.rect;
                records.push(FaceRecord {
                    face_box: [r.x0, r.y0, r.x1, r.y1],
                    landmarks: face.landmarks.unwrap_or([[f32::NAN; 2]; 68]),
                    crop: crop.to_source.0,
                });
            }
            next += 1;
        }
        let need = fb.samples_for_rows(range.clone());
        let samples = audio
            .read(need.clone())
            .map_err(|e| undecodable(e.to_string()))?;
        let total = audio.samples();
        let mel = mel_group_rows(fb, &samples, need.start.min(total), total, range.clone())
            .ok_or_else(|| undecodable("the decoded audio is shorter than it said".into()))?;
        let part = DecodedClip {
            id: pid,
            frames: range.len(),
            rgb,
            mel,
            masks: Some(masks),
            faces: records,
            width: s.resolution,
            height: s.resolution,
            rotation: end.rotation,
        };
        if !send(Ok(part)) {
            return Ok(cuts);
        }
    }
    Ok(cuts)
}

#[cfg(test)]
mod tests {
    use super::{plan, Piece};

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn long_segments_are_cut_into_equal_parts_no_longer_than_the_maximum() {
        let cfg = syncdiff_model::config::FaceConfig::default();
        let kept = |pieces: &[Piece]| -> Vec<(String, std::ops::Range<usize>)> {
            pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Keep(id, r) => Some((id.clone(), r.clone())),
                    Piece::Reject(_) => None,
                })
                .collect()
        };
        // A whole clip within the maximum keeps its id.
        let p = plan("a", 100, &[0..100], 25, 250, &cfg, 25.0);
        assert_eq!(kept(&p), vec![("a".to_string(), 0..100)]);
        // 600 frames with a face from 10 on, at most 250 a part: three parts of 196-197 frames.
        let p = plan("a", 600, &[10..600], 25, 250, &cfg, 25.0);
        let k = kept(&p);
        assert_eq!(
            k.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
            vec![10..206, 206..403, 403..600]
        );
        assert_eq!(k[0].0, "a#10-206");
        assert!(matches!(&p[0], Piece::Reject(r) if r.clip == "a#0-10" && r.reason == "no_face"));
        // A whole clip longer than the maximum is cut too, and short segments are rejected.
        let p = plan("a", 501, &[0..501], 25, 250, &cfg, 25.0);
        assert_eq!(kept(&p).len(), 3);
        let p = plan("a", 50, &[0..10, 20..50], 25, 250, &cfg, 25.0);
        assert_eq!(kept(&p), vec![("a#20-50".to_string(), 20..50)]);
        assert_eq!(p.len(), 3);
    }
    #[test]
    fn source_ids_drop_only_a_frame_range() {
        assert_eq!(super::source_id("spk00/00002#25-50"), "spk00/00002");
        assert_eq!(super::source_id("talks/take#2.mp4"), "talks/take#2.mp4");
        assert_eq!(
            super::source_id("talks/take#2.mp4#0-75"),
            "talks/take#2.mp4"
        );
        assert_eq!(super::source_id("a#b-c"), "a#b-c");
    }
}
