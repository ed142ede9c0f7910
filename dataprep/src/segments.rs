//! A decoded clip through the face front-end: the segments that follow one face become the
//! stored clips, each frame cropped to the model's square and masked from the face; the rest is
//! rejected with reason `no_face`.
//!
//! A clip kept whole keeps its id; the parts of a split clip are `<id>#<first>-<end>` (frame
//! numbers of the source clip, end exclusive), so a part can be traced back to its frames.

use syncdiff_model::config::FaceConfig;

use crate::face::{mouth_mask, CropTransform, FrontEnd};
use crate::lrs2::{reject, ClipParts, ClipSettings, DecodedClip, Rejection};
use crate::store::{FaceRecord, MEL_DIM};

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

/// Runs the front-end over `clip` (full-size frames) and cuts it into its parts.
pub(crate) fn split(clip: DecodedClip, cfg: &FaceConfig, s: &ClipSettings) -> ClipParts {
    let failed = |reason: &str, detail: String| ClipParts {
        parts: vec![Err(reject(&clip.id, reason, detail))],
        cuts: 0,
    };
    // dlib's detectors are per thread; the landmark model is shared (loaded once).
    let fe = match FrontEnd::new(cfg) {
        Ok(fe) => fe,
        Err(e) => return failed("face_model", e.to_string()),
    };
    let (w, h) = (clip.width, clip.height);
    let mut tracker = fe.tracker(w, h, s.fps);
    for f in clip.rgb.chunks_exact((w * h * 3) as usize) {
        if let Err(e) = tracker.push(f) {
            return failed("undecodable", e.to_string());
        }
    }
    let faces = tracker.finish();
    let cuts = faces.cuts.len();
    if faces.segments.is_empty() {
        let len = (w * h * 3) as usize;
        let mid = clip.frames / 2;
        let sample = clip.rgb.get(mid * len..(mid + 1) * len).unwrap_or_default();
        let detail = fe.no_face_message(sample, w, h, clip.frames);
        return ClipParts {
            cuts,
            ..failed("no_face", detail)
        };
    }
    let min_frames = (cfg.min_segment_s * s.fps).ceil() as usize;
    let whole = faces.segments.len() == 1 && faces.segments[0] == (0..clip.frames);
    let mut parts: Vec<Result<DecodedClip, Rejection>> = Vec::new();
    let mut covered = 0;
    for seg in &faces.segments {
        let id = if whole {
            clip.id.clone()
        } else {
            format!("{}#{}-{}", clip.id, seg.start, seg.end)
        };
        if seg.start > covered {
            parts.push(Err(reject(
                &format!("{}#{}-{}", clip.id, covered, seg.start),
                "no_face",
                "no tracked face in these frames".to_string(),
            )));
        }
        covered = seg.end;
        if seg.len() < min_frames {
            parts.push(Err(reject(
                &id,
                "no_face",
                format!(
                    "a face for {:.2} s, shorter than data.face.min_segment_s {}",
                    seg.len() as f64 / s.fps,
                    cfg.min_segment_s
                ),
            )));
            continue;
        }
        parts.push(Ok(part(&clip, id, seg.clone(), &faces.frames, cfg, s)));
    }
    if covered < clip.frames {
        parts.push(Err(reject(
            &format!("{}#{}-{}", clip.id, covered, clip.frames),
            "no_face",
            "no tracked face in these frames".to_string(),
        )));
    }
    ClipParts { parts, cuts }
}

/// One segment cropped and masked.
fn part(
    clip: &DecodedClip,
    id: String,
    seg: std::ops::Range<usize>,
    faces: &[Option<crate::face::FaceFrame>],
    cfg: &FaceConfig,
    s: &ClipSettings,
) -> DecodedClip {
    let (w, h) = (clip.width, clip.height);
    let frame_len = (w * h * 3) as usize;
    let side = s.resolution as usize;
    let mut rgb = Vec::with_capacity(seg.len() * side * side * 3);
    let mut masks = Vec::with_capacity(seg.len() * side * side);
    let mut records = Vec::with_capacity(seg.len());
    for i in seg.clone() {
        // Every frame of a segment has a face by construction.
        let Some(face) = &faces[i] else {
            unreachable!("frame {i} of a segment without a face")
        };
        let crop = CropTransform::new(cfg, &face.rect, w, h, s.resolution);
        rgb.extend(crop.warp(&clip.rgb[i * frame_len..(i + 1) * frame_len], w, h));
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
    let dim = MEL_DIM as usize;
    DecodedClip {
        id,
        frames: seg.len(),
        rgb,
        mel: clip.mel[seg.start * dim..seg.end * dim].to_vec(),
        masks: Some(masks),
        faces: records,
        width: s.resolution,
        height: s.resolution,
        rotation: clip.rotation,
    }
}

#[cfg(test)]
mod tests {
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
