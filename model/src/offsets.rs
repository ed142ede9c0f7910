//! syncnet_python's offset search on any pair of per-window features (SyncNet's for LSE-C/D in
//! evaluation, the sync expert's for its scores in evaluation, data preparation and validation): the mean distance between each visual feature and
//! the audio features shifted by -vshift..=vshift windows (zero rows outside), the offset at its
//! minimum, and the confidence (median minus minimum of the mean distances).

use tch::{Kind, Tensor};

/// The offset search's result for one video.
#[derive(Debug, Clone, PartialEq)]
pub struct OffsetScores {
    /// Median minus minimum of the mean distances (higher: more confident).
    pub confidence: f64,
    /// The minimum mean distance (lower: better sync).
    pub min_distance: f64,
    /// The audio-video offset at the minimum, in frames, as syncnet_python reports it.
    pub offset: i64,
    /// The mean distance at each offset, from `vshift` down to `-vshift` (syncnet_python's
    /// order: index i is offset `vshift - i`).
    pub distances: Vec<f64>,
}

/// The offset search on visual features `lip` (windows, D) and audio features `aud` (windows, D)
/// (on the CPU; float32).
pub fn offset_scores(
    lip: &Tensor,
    aud: &Tensor,
    vshift: i64,
) -> Result<OffsetScores, tch::TchError> {
    let mean = mean_distances(lip, aud, vshift);
    let distances: Vec<f64> = Vec::try_from(&mean)?;
    let (idx, min) = distances
        .iter()
        .enumerate()
        .fold(
            (0, f64::INFINITY),
            |(bi, bv), (i, &v)| if v < bv { (i, v) } else { (bi, bv) },
        );
    // torch.median: the lower of the two middle values for an even count.
    let median = f64::try_from(mean.median())?;
    Ok(OffsetScores {
        confidence: median - min,
        min_distance: min,
        offset: vshift - idx as i64,
        distances,
    })
}

/// Mean over windows of the distance between each lip feature and the audio features shifted by
/// -vshift..=vshift (zero rows outside): (2 vshift + 1,).
fn mean_distances(lip: &Tensor, aud: &Tensor, vshift: i64) -> Tensor {
    let (w, d) = lip
        .size2()
        .expect("lip features are (windows, D), checked by the caller");
    let span = 2 * vshift + 1;
    let padded = aud.constant_pad_nd([0, 0, vshift, vshift]);
    // (W, span, D): row i holds padded[i .. i + span].
    let shifted = padded.unfold(0, span, 1).permute([0, 2, 1]);
    let lips = lip.unsqueeze(1).expand([w, span, d], false);
    let dist = Tensor::pairwise_distance(&lips, &shifted, 2.0, 1e-6, false);
    dist.mean_dim(0, false, Kind::Float)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Audio features that are the visual ones `k` windows later (`aud[m] = lip[m + k]`: the
    /// audio runs `k` frames ahead): the search reports offset `k` at index `vshift - k`, with
    /// a minimum far below the other offsets' distances.
    #[test]
    fn the_search_finds_a_known_shift_with_syncnet_pythons_sign() {
        let n = 60;
        let _torch = syncdiff_devkit::torch();
        tch::manual_seed(5);
        let base = Tensor::randn([n, 8], (Kind::Float, tch::Device::Cpu));
        for k in [-4i64, 0, 3] {
            let lip = base.narrow(0, 10, 40);
            let aud = base.narrow(0, 10 + k, 40);
            let s = offset_scores(&lip, &aud, 6).unwrap();
            assert_eq!(s.offset, k, "shift {k}: {s:?}");
            assert_eq!(s.distances.len(), 13);
            assert_eq!(s.distances[(6 - k) as usize], s.min_distance);
            // Only the windows whose shifted audio falls in the zero padding keep a distance.
            assert!(
                s.min_distance < 0.2 * (s.min_distance + s.confidence),
                "{s:?}"
            );
        }
    }
}
