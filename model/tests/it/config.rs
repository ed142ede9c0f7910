//! Configuration schema: loading, error messages, overrides, derived values.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use syncdiff_model::config::{
    AutoencoderKind, Config, ConfigError, EpochUnit, Override, PredictionTarget, ReferenceMode,
};

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn load(name: &str, sets: &[&str]) -> Result<Config, ConfigError> {
    let overrides: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
    Config::load(&configs().join(name), &overrides)
}

fn yaml_err(text: &str, sets: &[&str]) -> String {
    let overrides: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
    Config::from_yaml(text, "configs/x.yaml", &overrides)
        .unwrap_err()
        .to_string()
}

#[test]
fn paper_config_has_the_spec_numbers() {
    let c = load("syncdiff-lrs2.yaml", &[]).unwrap();
    let u = &c.model.unet;
    assert_eq!(u.model_channels, 256);
    assert_eq!(u.channel_mult, vec![1, 2, 3, 4]);
    assert_eq!(u.block_out_channels(), vec![256, 512, 768, 1024]);
    assert_eq!(u.attention_resolutions, vec![8, 4, 2]);
    assert_eq!(u.head_dim, 32);
    assert_eq!(c.model.unet_in_channels(), 10);
    assert_eq!(c.model.unet_out_channels(), 3);
    assert_eq!(c.model.context_dim(), 768);
    assert_eq!(c.latent_side(), 64);
    assert_eq!(c.model.autoencoder.kind, AutoencoderKind::VqF4);
    assert_eq!(c.model.autoencoder.downsample_factor(), 4);
    assert_eq!(c.model.autoencoder.num_vq_embeddings, 8192);
    let d = &c.model.diffusion;
    assert_eq!(d.timesteps, 1000);
    assert_eq!((d.beta_start, d.beta_end), (0.0015, 0.0195));
    assert_eq!(d.prediction, PredictionTarget::Eps);
    assert_eq!(c.sample.ddim_steps, 200);
    assert_eq!(c.sample.eta, 0.0);
    let a = &c.model.audio_encoder;
    assert_eq!(
        (a.embed_dim, a.layers, a.heads, a.ffn_dim),
        (768, 12, 12, 3072)
    );
    assert_eq!(a.frozen_layers, 9);
    assert_eq!(c.model.temporal.window, 8);
    assert_eq!(c.model.priors.reference, ReferenceMode::RndPrvMinus);
    assert_eq!(c.train.global_batch, 48);
    assert_eq!(c.train.epochs, 200);
    assert_eq!(c.train.epoch_unit, EpochUnit::Clip);
    assert_eq!(c.train.grad_clip, Some(0.1));
    assert_eq!(c.train.ema.decay, 0.9999);
    let plan = c.batch_plan(6).unwrap();
    assert_eq!(
        (plan.per_rank, plan.micro_batch, plan.accumulation),
        (8, 8, 1)
    );
    // Clip epochs over the LRS2 train split: 45839 / 48 = 954 steps per epoch, x 200 epochs.
    let steps = c.step_plan(Some((45839, 2_600_000)));
    assert_eq!(steps.steps_per_epoch, Some(954));
    assert_eq!(steps.total_steps, Some(190_800));
}

#[test]
fn defaults_are_the_paper_config() {
    // The paper file spells every key out; the built-in defaults must agree with it, so a
    // small file that sets only a few keys means "the paper, except ...".
    let paper = load("syncdiff-lrs2.yaml", &[]).unwrap();
    let mut defaults = Config::from_yaml("train: {}\n", "nearly-empty.yaml", &[]).unwrap();
    defaults.data = paper.data.clone();
    defaults.model.autoencoder.weights = paper.model.autoencoder.weights.clone();
    defaults.model.audio_encoder.weights = paper.model.audio_encoder.weights.clone();
    defaults.checkpoint.url = paper.checkpoint.url.clone();
    defaults.checkpoint.keep_every = paper.checkpoint.keep_every;
    defaults.log.dir = paper.log.dir.clone();
    assert_eq!(defaults, paper);
}

#[test]
fn input_channels_follow_the_prior_mode() {
    let cases = [
        ("ablations/table3-rnd.yaml", 9),
        ("ablations/table3-prv.yaml", 9),
        ("ablations/table3-prv-bn.yaml", 7),
        ("ablations/table5-np5.yaml", 14),
        ("ablations/table5-np10.yaml", 19),
        ("syncdiff-lrs2.yaml", 10),
    ];
    for (file, want) in cases {
        let c = load(file, &[]).unwrap();
        assert_eq!(c.model.unet_in_channels(), want, "{file}");
    }
    let c = load(
        "syncdiff-lrs2.yaml",
        &[
            "model.priors.reference=prv",
            "model.priors.previous_frames=2",
        ],
    )
    .unwrap();
    assert_eq!(c.model.unet_in_channels(), 3 + 3 + 6);
}

#[test]
fn ablations_change_only_their_knob() {
    for nf in [3, 6, 12] {
        let c = load(&format!("ablations/table6-nf{nf}.yaml"), &[]).unwrap();
        assert_eq!(c.model.audio_encoder.frozen_layers, nf);
        assert_eq!(c.model.unet.model_channels, 256);
    }
}

#[test]
fn in_channels_cannot_be_set() {
    let e = yaml_err("model:\n  unet:\n    in_channels: 10\n", &[]);
    assert!(
        e.starts_with("configs/x.yaml: model.unet.in_channels: derived from model.priors"),
        "{e}"
    );
    let e = yaml_err("train: {}\n", &["model.unet.in_channels=7"]);
    assert!(
        e.starts_with("--set model.unet.in_channels=7: model.unet.in_channels: derived"),
        "{e}"
    );
}

#[test]
fn debug_config_is_tiny() {
    let c = load("debug.yaml", &[]).unwrap();
    assert_eq!(c.model.autoencoder.kind, AutoencoderKind::Resample);
    assert_eq!(c.latent_side(), 8);
    assert_eq!(c.train.steps, Some(10));
    assert_eq!(c.step_plan(None).total_steps, Some(10));
    assert_eq!(c.model.diffusion.prediction, PredictionTarget::X0);
    // Inherited from the paper file through `extends`.
    assert_eq!(c.model.diffusion.timesteps, 1000);
}

#[test]
fn unknown_key_names_file_and_path() {
    let e = yaml_err("model:\n  unet:\n    channel_mul: [1, 2]\n", &[]);
    assert!(
        e.starts_with("configs/x.yaml: model.unet.channel_mul: unknown field `channel_mul`"),
        "{e}"
    );
    let e = yaml_err("trian:\n  seed: 1\n", &[]);
    assert!(
        e.starts_with("configs/x.yaml: trian: unknown field `trian`"),
        "{e}"
    );
}

#[test]
fn wrong_type_names_file_and_path() {
    let e = yaml_err("model:\n  unet:\n    channel_mult: abc\n", &[]);
    assert_eq!(
        e,
        "configs/x.yaml: model.unet.channel_mult: expected a list of integers"
    );
    let e = yaml_err("model:\n  unet:\n    channel_mult: [1, x]\n", &[]);
    assert_eq!(
        e,
        "configs/x.yaml: model.unet.channel_mult: expected a list of integers"
    );
    let e = yaml_err("train:\n  global_batch: many\n", &[]);
    assert!(
        e.starts_with("configs/x.yaml: train.global_batch: invalid type: string \"many\""),
        "{e}"
    );
    let e = yaml_err("model:\n  priors:\n    reference: best\n", &[]);
    assert!(
        e.starts_with("configs/x.yaml: model.priors.reference: unknown variant `best`"),
        "{e}"
    );
}

#[test]
fn bad_set_names_the_argument_and_path() {
    let e = yaml_err("train: {}\n", &["model.unet.channel_mult=abc"]);
    assert_eq!(
        e,
        "--set model.unet.channel_mult=abc: model.unet.channel_mult: expected a list of integers"
    );
    let e = yaml_err("train: {}\n", &["train.nope=1"]);
    assert!(
        e.starts_with("--set train.nope=1: train.nope: unknown field `nope`"),
        "{e}"
    );
    let e = Override::parse("train.seed").unwrap_err().to_string();
    assert_eq!(e, "--set train.seed: expected key.path=value");
    let e = Override::parse("train..seed=1").unwrap_err().to_string();
    assert!(
        e.starts_with("--set train..seed=1: empty key segment"),
        "{e}"
    );
    let e = yaml_err("train: {}\n", &["train.seed=1", "train.seed.x=2"]);
    assert!(e.starts_with("--set train.seed.x=2: train.seed: "), "{e}");
}

#[test]
fn set_beats_the_file() {
    let c = load(
        "syncdiff-lrs2.yaml",
        &[
            "train.global_batch=96",
            "model.unet.channel_mult=[1, 2]",
            "model.unet.attention_resolutions=[2]",
            "checkpoint.url=s3://bucket/run-1",
        ],
    )
    .unwrap();
    assert_eq!(c.train.global_batch, 96);
    assert_eq!(c.model.unet.channel_mult, vec![1, 2]);
    assert_eq!(c.checkpoint.url, "s3://bucket/run-1");
    // The last --set of a key wins.
    let c = load("debug.yaml", &["train.seed=1", "train.seed=2"]).unwrap();
    assert_eq!(c.train.seed, 2);
}

#[test]
fn validation_names_the_key() {
    let e = yaml_err("model:\n  audio_encoder:\n    frozen_layers: 13\n", &[]);
    assert_eq!(
        e,
        "configs/x.yaml: model.audio_encoder.frozen_layers: 13 exceeds the 12 layers"
    );
    let e = yaml_err("train: {}\n", &["model.unet.head_dim=48"]);
    assert!(
        e.starts_with("--set model.unet.head_dim=48: model.unet.head_dim: 48 does not divide"),
        "{e}"
    );
    let e = yaml_err("sample:\n  ddim_steps: 0\n", &[]);
    assert!(
        e.starts_with("configs/x.yaml: sample.ddim_steps: 0 is outside"),
        "{e}"
    );
    // DPM-Solver++ is deterministic: eta > 0 with it is refused.
    let e = yaml_err("sample:\n  sampler: dpmpp-2m\n  eta: 0.5\n", &[]);
    assert!(
        e.starts_with("configs/x.yaml: sample.eta: 0.5: stochastic steps are DDIM's"),
        "{e}"
    );
    // Guidance needs a model trained with audio dropout; both are range-checked.
    let e = yaml_err("sample:\n  guidance: 2\n", &[]);
    assert!(
        e.starts_with("configs/x.yaml: sample.guidance: 2: guidance needs the null audio context"),
        "{e}"
    );
    let e = yaml_err("sample:\n  guidance: 0.5\n", &["train.audio_dropout=0.1"]);
    assert!(
        e.contains("sample.guidance: 0.5: must be at least 1"),
        "{e}"
    );
    let e = yaml_err("train:\n  audio_dropout: 1.0\n", &[]);
    assert!(
        e.contains("train.audio_dropout: 1: must be in [0, 1)"),
        "{e}"
    );
    let c = Config::from_yaml(
        "train:\n  audio_dropout: 0.1\nsample:\n  guidance: 1.5\n  final_x0: true\n",
        "configs/x.yaml",
        &[],
    );
    assert!(c.is_ok(), "{c:?}");
    let e = yaml_err("sample:\n  sampler: euler\n", &[]);
    assert!(e.contains("sample.sampler") && e.contains("euler"), "{e}");
    // Object-store data sets are read through the node cache; other schemes, credentials in
    // the URL and an empty cache are refused by name.
    let c = Config::from_yaml(
        "data:\n  dataset: s3://bucket/train\n  val_dataset: gs://b/val\n",
        "configs/x.yaml",
        &[],
    );
    assert!(c.is_ok(), "{c:?}");
    let e = yaml_err("train: {}\n", &["data.val_dataset=http://host/val"]);
    assert!(
        e.starts_with("--set data.val_dataset=http://host/val: data.val_dataset: http://host/val: unsupported scheme http://"),
        "{e}"
    );
    let e = yaml_err("train: {}\n", &["data.dataset=s3://key:hunter2@bucket/x"]);
    assert!(e.contains("data.dataset") && !e.contains("hunter2"), "{e}");
    let e = yaml_err("train: {}\n", &["data.cache.max_gb=0"]);
    assert!(e.contains("data.cache.max_gb"), "{e}");
}

#[test]
fn face_settings_that_cannot_work_together_are_refused() {
    let text = "data:\n  face:\n    detector: dlib-hog\n    crop: face\n    mask: landmarks\n";
    Config::from_yaml(text, "configs/x.yaml", &[]).unwrap();
    let e = yaml_err("data:\n  face:\n    crop: face\n", &[]);
    assert!(
        e.starts_with("configs/x.yaml: data.face.crop: `face` needs a face detector"),
        "{e}"
    );
    let e = yaml_err(
        "train: {}\n",
        &["data.face.detector=boxes", "data.face.mask=landmarks"],
    );
    assert!(
        e.contains("data.face.mask: `landmarks` needs landmarks, which data.face.detector boxes"),
        "{e}"
    );
    let e = yaml_err("train: {}\n", &["data.face.detect_every=3"]);
    assert!(
        e.contains("data.face.detect_every: 3 applies to a dlib detector, not none"),
        "{e}"
    );
    let e = yaml_err("train: {}\n", &["data.face.detector=dlib-cnn"]);
    assert!(e.contains("data.face.cnn_model: dlib-cnn needs"), "{e}");
    let e = yaml_err("train: {}\n", &["data.face.detector=s3fd"]);
    assert!(
        e.contains("data.face.detector") && e.contains("s3fd"),
        "{e}"
    );
    let e = yaml_err(
        "train: {}\n",
        &["data.face.detector=boxes", "data.face.crop=face"],
    );
    assert!(
        e.contains("data.face.crop: `face` with sidecar boxes is not supported"),
        "{e}"
    );
    let e = yaml_err("train: {}\n", &["data.face.min_face=4"]);
    assert!(
        e.contains("data.face.min_face: 4 is below 20 pixels"),
        "{e}"
    );
    let e = yaml_err("train: {}\n", &["data.face.smooth_window=4"]);
    assert!(e.contains("data.face.smooth_window: 4 must be odd"), "{e}");
    let e = yaml_err("train: {}\n", &["data.face.track_iou=1.5"]);
    assert!(
        e.contains("data.face.track_iou: 1.5 is outside (0, 1)"),
        "{e}"
    );
}

#[test]
fn global_batch_must_divide_over_ranks() {
    let c = load("syncdiff-lrs2.yaml", &["train.global_batch=50"]).unwrap();
    let e = c.batch_plan(6).unwrap_err().to_string();
    assert_eq!(
        e,
        "train.global_batch: 50 samples cannot be split evenly over 6 ranks; use a multiple of 6 or launch a number of ranks that divides 50"
    );
    let c = load("syncdiff-lrs2.yaml", &["train.max_micro_batch=3"]).unwrap();
    let p = c.batch_plan(6).unwrap();
    assert_eq!((p.per_rank, p.micro_batch, p.accumulation), (8, 2, 4));
    let p = c.batch_plan(1).unwrap();
    assert_eq!((p.per_rank, p.micro_batch, p.accumulation), (48, 3, 16));
}

#[test]
fn frame_epochs_count_usable_frames() {
    let c = load("syncdiff-lrs2.yaml", &["train.epoch_unit=frame"]).unwrap();
    // Every frame with one previous frame: 2.6 M - 45839 clips x 1.
    let s = c.step_plan(Some((45839, 2_600_000)));
    assert_eq!(s.samples_per_epoch, Some(2_600_000 - 45839));
    assert_eq!(s.steps_per_epoch, Some((2_600_000 - 45839) / 48));
}

#[test]
fn printed_config_loads_back_identically() {
    for file in [
        "syncdiff-lrs2.yaml",
        "debug.yaml",
        "ablations/table5-np5.yaml",
    ] {
        let c = load(file, &[]).unwrap();
        let text = c.to_yaml();
        assert!(text.contains("#   model.unet.in_channels: "), "{text}");
        let back = Config::from_yaml(&text, "printed.yaml", &[]).unwrap();
        assert_eq!(back, c, "{file}");
    }
}

#[test]
fn extends_cycles_and_missing_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), "extends: b.yaml\n").unwrap();
    std::fs::write(dir.path().join("b.yaml"), "extends: a.yaml\n").unwrap();
    let e = Config::load(&dir.path().join("a.yaml"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("extends: more than"), "{e}");
    std::fs::write(dir.path().join("c.yaml"), "extends: missing.yaml\n").unwrap();
    let e = Config::load(&dir.path().join("c.yaml"), &[])
        .unwrap_err()
        .to_string();
    // The error names the file that extends, and the base it could not find.
    assert!(
        e.starts_with(&format!(
            "{}: extends: missing.yaml: no such file",
            dir.path().join("c.yaml").display()
        )),
        "{e}"
    );
    for (name, text) in [
        ("empty.yaml", ""),
        ("comments.yaml", "# nothing here\n\n# at all\n"),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
        let e = Config::load(&dir.path().join(name), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "{}: the file is empty or only comments",
                dir.path().join(name).display()
            )),
            "{e}"
        );
    }
    let e = Config::from_yaml("- 1\n- 2\n", "list.yaml", &[])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "list.yaml: expected a mapping of sections (data, model, train, ...)"
    );
    let e = Config::from_yaml("model: {unet: [}\n", "broken.yaml", &[])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("broken.yaml: ") && !e.contains('\n'), "{e}");
}
