//! The sample order: independent of the world size, resumable mid-epoch, every choice keyed.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use syncdiff_model::config::EpochUnit;
use syncdiff_runtime::rng::gaussian;
use syncdiff_trainer::data::{LoaderState, SampleSpec, Sampler};

fn frames() -> Vec<u64> {
    vec![75, 1, 40, 90, 2, 60, 75, 33, 51, 80]
}

fn run(
    s: &Sampler,
    mut state: LoaderState,
    steps: usize,
    world: u64,
    micro: u64,
) -> (Vec<Vec<SampleSpec>>, LoaderState) {
    let mut out = Vec::new();
    for _ in 0..steps {
        let order = s.permutation(state.epoch);
        let mut step = Vec::new();
        for rank in 0..world {
            for mb in s.step(state, rank, world, micro, &order) {
                step.extend(mb);
            }
        }
        out.push(step);
        state = s.advance(state);
    }
    (out, state)
}

#[test]
fn the_samples_of_a_step_do_not_depend_on_the_world_size() {
    for unit in [EpochUnit::Clip, EpochUnit::Frame] {
        let s = Sampler::new(7, unit, &frames(), 1, 1000, 8).unwrap();
        let (one, _) = run(&s, LoaderState::default(), 5, 1, 8);
        let (two, _) = run(&s, LoaderState::default(), 5, 2, 2);
        let (four, _) = run(&s, LoaderState::default(), 5, 4, 1);
        assert_eq!(one, two, "{unit:?}");
        assert_eq!(one, four, "{unit:?}");
    }
}

#[test]
fn micro_batches_split_the_rank_block() {
    let s = Sampler::new(1, EpochUnit::Clip, &frames(), 1, 1000, 8).unwrap();
    let order = s.permutation(0);
    let mbs = s.step(LoaderState::default(), 1, 2, 2, &order);
    assert_eq!(mbs.len(), 2);
    assert_eq!(
        mbs.iter().flatten().map(|x| x.position).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
}

#[test]
fn resume_continues_at_exactly_the_next_sample_also_with_another_world_size() {
    let s = Sampler::new(3, EpochUnit::Frame, &frames(), 1, 1000, 16).unwrap();
    let (all, _) = run(&s, LoaderState::default(), 40, 2, 4);
    for k in [1usize, 17, 25, 39] {
        let (_, state) = run(&s, LoaderState::default(), k, 2, 4);
        // The state is plain data: round-trip it through JSON as a checkpoint would.
        let saved: LoaderState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        let (rest, _) = run(&s, saved, 40 - k, 1, 8);
        assert_eq!(rest, all[k..], "resume after {k} steps on 1 rank");
    }
}

#[test]
fn an_epoch_visits_every_item_once_in_a_seeded_order() {
    let s = Sampler::new(5, EpochUnit::Frame, &frames(), 2, 1000, 4).unwrap();
    // Usable clips have more than 2 frames; each contributes frames - 2 targets.
    let want: u64 = frames().iter().filter(|&&f| f > 2).map(|f| f - 2).sum();
    assert_eq!(s.epoch_len(), want);
    let order = s.permutation(0);
    let targets: BTreeSet<(usize, u64)> = (0..s.epoch_len())
        .map(|p| {
            let x = s.sample(0, p, &order);
            (x.clip, x.t)
        })
        .collect();
    assert_eq!(targets.len() as u64, want);
    assert!(targets.iter().all(|&(c, t)| t >= 2 && t < frames()[c]));
    assert_ne!(s.permutation(0), s.permutation(1));
    assert_eq!(
        s.permutation(1),
        Sampler::new(5, EpochUnit::Frame, &frames(), 2, 1000, 4)
            .unwrap()
            .permutation(1)
    );
    assert_ne!(
        s.permutation(0),
        Sampler::new(6, EpochUnit::Frame, &frames(), 2, 1000, 4)
            .unwrap()
            .permutation(0)
    );
}

#[test]
fn every_choice_is_in_range() {
    let s = Sampler::new(9, EpochUnit::Clip, &frames(), 5, 1000, 4).unwrap();
    // Clips of 1 and 2 frames are never drawn.
    assert_eq!(s.epoch_len(), 8);
    for epoch in 0..20 {
        let order = s.permutation(epoch);
        for p in 0..s.epoch_len() {
            let x = s.sample(epoch, p, &order);
            let f = frames()[x.clip];
            assert!(
                x.t >= 5 && x.t < f && x.identity < f && x.identity != x.t && x.timestep < 1000,
                "{x:?}"
            );
        }
    }
    let e = Sampler::new(0, EpochUnit::Clip, &[1, 1], 1, 1000, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no usable sample"), "{e}");
    let e = Sampler::new(0, EpochUnit::Clip, &frames(), 1, 1000, 64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fewer than train.global_batch = 64"), "{e}");
}

#[test]
fn epochs_end_before_a_partial_global_batch() {
    // With NP = 1 every clip of at least 2 frames is usable: 9 clips, 3 steps of 3.
    let s = Sampler::new(0, EpochUnit::Clip, &frames(), 1, 1000, 3).unwrap();
    assert_eq!((s.epoch_len(), s.steps_per_epoch()), (9, 3));
    let st = s.advance(LoaderState::default());
    assert_eq!(
        st,
        LoaderState {
            epoch: 0,
            consumed: 3
        }
    );
    let st = s.advance(st);
    assert_eq!(
        st,
        LoaderState {
            epoch: 0,
            consumed: 6
        }
    );
    assert_eq!(
        s.advance(st),
        LoaderState {
            epoch: 1,
            consumed: 0
        }
    );
    let s = Sampler::new(0, EpochUnit::Clip, &frames(), 1, 1000, 4).unwrap();
    let st = s.advance(s.advance(LoaderState::default()));
    assert_eq!(
        st,
        LoaderState {
            epoch: 1,
            consumed: 0
        },
        "the 9th clip is dropped, not carried over"
    );
}

#[test]
fn noise_is_standard_normal_and_keyed() {
    let g = gaussian(42, 100_001);
    assert_eq!(g.len(), 100_001);
    let mean = g.iter().map(|&x| f64::from(x)).sum::<f64>() / g.len() as f64;
    let var = g
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / g.len() as f64;
    assert!(
        mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
        "mean {mean}, var {var}"
    );
    assert_eq!(gaussian(42, 10), gaussian(42, 10));
    assert_ne!(gaussian(42, 10), gaussian(43, 10));
}
