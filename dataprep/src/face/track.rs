//! From per-frame observations to a tracked, smoothed face: segments where one face is followed,
//! boxes interpolated between detector runs, and a centred moving average over boxes and
//! landmarks. Pure functions: the dlib calls happen before, in [`super::Tracker`].

use std::ops::Range;

use super::geometry::{landmark_box, Landmarks, Rect};

/// What was seen on one frame.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawFrame {
    /// The detector ran on this frame.
    pub ran: bool,
    /// A new shot starts here.
    pub cut: bool,
    /// The tracked face's detection, when the detector ran and found it.
    pub det: Option<Rect>,
    /// Landmarks predicted in the tracked box (before smoothing).
    pub landmarks: Option<Landmarks>,
}

/// The face on one frame of a segment.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceFrame {
    /// Face box in source pixels: from the smoothed landmarks when there are any
    /// ([`landmark_box`]), else the detector's box (interpolated between runs, smoothed).
    pub rect: Rect,
    /// The 68 landmarks in source pixels (smoothed), when a dlib detector ran.
    pub landmarks: Option<Landmarks>,
    /// Whether the detector found the face on this very frame.
    pub detected: bool,
}

/// Consecutive frames that follow one face, with no shot boundary inside: the face is lost from
/// the first detector run that misses it, and a segment goes on only if the face is found again
/// within `allowance` lost frames. A segment ends at its last detection, or up to
/// `detect_every - 1` frames later where the detector did not run.
pub(crate) fn segments(
    raw: &[RawFrame],
    allowance: usize,
    detect_every: usize,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    // (start, last matched frame, first miss since then)
    let mut current: Option<(usize, usize, Option<usize>)> = None;
    let close = |(start, last, _): (usize, usize, Option<usize>), out: &mut Vec<Range<usize>>| {
        let mut end = last;
        while end + 1 < raw.len()
            && end + 1 - last < detect_every
            && !raw[end + 1].ran
            && !raw[end + 1].cut
        {
            end += 1;
        }
        out.push(start..end + 1);
    };
    for (i, f) in raw.iter().enumerate() {
        if f.cut {
            if let Some(c) = current.take() {
                close(c, &mut out);
            }
        }
        if f.det.is_some() {
            current = match current {
                Some((start, _, miss)) if miss.is_none_or(|m| i - m <= allowance) => {
                    Some((start, i, None))
                }
                Some(c) => {
                    close(c, &mut out);
                    Some((i, i, None))
                }
                None => Some((i, i, None)),
            };
        } else if f.ran {
            if let Some((_, _, miss @ None)) = &mut current {
                *miss = Some(i);
            }
        }
    }
    if let Some(c) = current {
        close(c, &mut out);
    }
    out
}

/// Boxes on every frame of a segment: detections where the detector found the face, linear
/// interpolation between them, the last one held after it.
fn interpolate(raw: &[RawFrame], seg: &Range<usize>) -> Vec<Rect> {
    let dets: Vec<(usize, Rect)> = seg
        .clone()
        .filter_map(|i| raw[i].det.map(|r| (i, r)))
        .collect();
    seg.clone()
        .map(|i| {
            let next = dets.partition_point(|(j, _)| *j <= i);
            match (next.checked_sub(1).map(|p| dets[p]), dets.get(next)) {
                (Some((a, ra)), Some(&(b, rb))) => ra.lerp(&rb, (i - a) as f32 / (b - a) as f32),
                (Some((_, ra)), None) => ra,
                (None, Some(&(_, rb))) => rb,
                (None, None) => unreachable!("a segment starts with a detection"),
            }
        })
        .collect()
}

/// Centred moving average over `window` frames; the window shrinks symmetrically at the ends so
/// that a linear motion stays unbiased.
fn smooth<T: Copy>(
    xs: &[T],
    window: usize,
    flat: impl Fn(&T) -> Vec<f32>,
    back: impl Fn(&[f32]) -> T,
) -> Vec<T> {
    let half = window.saturating_sub(1) / 2;
    if half == 0 || xs.len() < 3 {
        return xs.to_vec();
    }
    let flats: Vec<Vec<f32>> = xs.iter().map(&flat).collect();
    (0..xs.len())
        .map(|i| {
            let h = half.min(i).min(xs.len() - 1 - i);
            let mut acc = vec![0f32; flats[i].len()];
            for f in &flats[i - h..=i + h] {
                for (a, v) in acc.iter_mut().zip(f) {
                    *a += v;
                }
            }
            let n = (2 * h + 1) as f32;
            acc.iter_mut().for_each(|a| *a /= n);
            back(&acc)
        })
        .collect()
}

fn smooth_rects(rects: &[Rect], window: usize) -> Vec<Rect> {
    smooth(
        rects,
        window,
        |r| vec![r.x0, r.y0, r.x1, r.y1],
        |v| Rect {
            x0: v[0],
            y0: v[1],
            x1: v[2],
            y1: v[3],
        },
    )
}

fn smooth_landmarks(lms: &[Landmarks], window: usize) -> Vec<Landmarks> {
    smooth(
        lms,
        window,
        |l| l.iter().flatten().copied().collect(),
        |v| {
            let mut l = [[0f32; 2]; 68];
            for (k, p) in l.iter_mut().enumerate() {
                *p = [v[2 * k], v[2 * k + 1]];
            }
            l
        },
    )
}

/// Per frame, the tracked face (or none), and the segments.
pub(crate) fn resolve(
    raw: &[RawFrame],
    allowance: usize,
    detect_every: usize,
    window: usize,
) -> (Vec<Option<FaceFrame>>, Vec<Range<usize>>) {
    let segs = segments(raw, allowance, detect_every);
    let mut frames = vec![None; raw.len()];
    for seg in &segs {
        let lms: Option<Vec<Landmarks>> = seg.clone().map(|i| raw[i].landmarks).collect();
        let lms = lms.map(|l| smooth_landmarks(&l, window));
        // The detector's boxes only where there are no landmarks to make the box from.
        let rects = match &lms {
            Some(l) => l.iter().map(landmark_box).collect(),
            None => smooth_rects(&interpolate(raw, seg), window),
        };
        for (k, i) in seg.clone().enumerate() {
            let landmarks = lms.as_ref().map(|l| l[k]);
            frames[i] = Some(FaceFrame {
                rect: rects[k],
                landmarks,
                detected: raw[i].det.is_some(),
            });
        }
    }
    (frames, segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: f32) -> Rect {
        Rect {
            x0: x,
            y0: 0.0,
            x1: x + 10.0,
            y1: 10.0,
        }
    }

    /// `pattern`: one char per frame: D detected, m ran and missed, . not run, | cut + detected.
    fn raw(pattern: &str) -> Vec<RawFrame> {
        pattern
            .chars()
            .enumerate()
            .map(|(i, c)| RawFrame {
                ran: c != '.',
                cut: c == '|',
                det: matches!(c, 'D' | '|').then(|| at(i as f32)),
                landmarks: None,
            })
            .collect()
    }

    #[test]
    fn short_gaps_are_bridged_long_ones_split() {
        assert_eq!(segments(&raw("DDmDD"), 1, 1), vec![0..5]);
        assert_eq!(segments(&raw("DDmmmDD"), 2, 1), vec![0..2, 5..7]);
        assert_eq!(segments(&raw("mmmm"), 2, 1), Vec::<Range<usize>>::new());
        // A shot boundary always splits, even without a gap.
        assert_eq!(segments(&raw("DDD|DD"), 5, 1), vec![0..3, 3..6]);
    }

    #[test]
    fn frames_between_detector_runs_belong_to_the_segment() {
        // Detector every 3rd frame: the frames after the last run are kept up to the next run.
        assert_eq!(segments(&raw("D..D..D.."), 2, 3), vec![0..9]);
        // ... but not past a run that missed.
        assert_eq!(segments(&raw("D..D..m..m.."), 2, 3), vec![0..6]);
        // Lost time counts from the first run that missed, not from the last detection.
        assert_eq!(segments(&raw("D....mmD...."), 2, 5), vec![0..12]);
        assert_eq!(segments(&raw("D....mmmD...."), 2, 5), vec![0..5, 8..13]);
    }

    #[test]
    fn boxes_are_interpolated_between_runs_and_held_after() {
        let r = raw("D..D..");
        let seg = 0..6;
        let boxes = interpolate(&r, &seg);
        let xs: Vec<f32> = boxes.iter().map(|b| b.x0).collect();
        assert_eq!(xs, vec![0.0, 1.0, 2.0, 3.0, 3.0, 3.0]);
    }

    #[test]
    fn smoothing_keeps_a_linear_motion_and_removes_noise() {
        let linear: Vec<Rect> = (0..20).map(|i| at(i as f32 * 2.0)).collect();
        assert_eq!(smooth_rects(&linear, 5), linear);
        let noisy: Vec<Rect> = (0..20)
            .map(|i| at(if i % 2 == 0 { 1.0 } else { -1.0 }))
            .collect();
        let s = smooth_rects(&noisy, 5);
        let dev = |v: &[Rect]| v[2..18].iter().map(|r| r.x0.abs()).sum::<f32>();
        assert!(
            dev(&s) < 0.25 * dev(&noisy),
            "{} vs {}",
            dev(&s),
            dev(&noisy)
        );
    }
}
