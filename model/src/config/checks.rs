//! Semantic checks that serde's types cannot express. Each failure names the full key path.

use super::{AudioEncoderKind, AutoencoderKind, Config, FaceCrop, FaceDetectorKind, FaceMask};

type Check = Result<(), (String, String)>;

fn ensure(ok: bool, key: &str, message: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err((key.to_string(), message()))
    }
}

/// Data sets are read from a file system (local or shared): a URL would otherwise be taken as a
/// relative directory named `s3:`.
/// A data set location: a path, or an object-store URL (read through `data.cache`) that carries
/// no credentials.
fn dataset_location(path: &str, key: &str) -> Check {
    let Some((scheme, _)) = path.split_once("://") else {
        return Ok(());
    };
    ensure(matches!(scheme, "s3" | "gs" | "az"), key, || {
        format!(
            "{}: unsupported scheme {scheme}://; give a path, or an s3://, gs:// or az:// URL",
            super::redact_url(path)
        )
    })?;
    match super::url_secret_problem(path) {
        Some(problem) => Err((key.into(), problem.into())),
        None => Ok(()),
    }
}

fn unit_interval(x: f64, key: &str) -> Check {
    ensure((0.0..1.0).contains(&x), key, || {
        format!("{x} is outside [0, 1)")
    })
}

fn positive<T: PartialOrd + Default + std::fmt::Display + Copy>(x: T, key: &str) -> Check {
    ensure(x > T::default(), key, || {
        format!("{x} must be greater than 0")
    })
}

impl Config {
    /// Checks relations between keys; returns the offending key path and the reason.
    pub(crate) fn validate(&self) -> Check {
        self.validate_data()?;
        self.validate_model()?;
        self.validate_run()
    }

    fn validate_data(&self) -> Check {
        let d = &self.data;
        let factor = self.model.autoencoder.downsample_factor();
        positive(d.resolution, "data.resolution")?;
        ensure(d.resolution % factor == 0, "data.resolution", || {
            format!(
                "{} is not divisible by the autoencoder factor {factor}",
                d.resolution
            )
        })?;
        positive(d.fps, "data.fps")?;
        positive(d.sample_rate, "data.sample_rate")?;
        ensure(
            d.mask_fraction > 0.0 && d.mask_fraction <= 1.0,
            "data.mask_fraction",
            || format!("{} is outside (0, 1]", d.mask_fraction),
        )?;
        positive(d.clips_per_shard, "data.clips_per_shard")?;
        ensure(!d.dataset.is_empty(), "data.dataset", || {
            "must not be empty".into()
        })?;
        dataset_location(&d.dataset, "data.dataset")?;
        if let Some(v) = &d.val_dataset {
            dataset_location(v, "data.val_dataset")?;
        }
        positive(d.cache.max_gb, "data.cache.max_gb")?;
        self.validate_face()
    }

    fn validate_face(&self) -> Check {
        let f = &self.data.face;
        let det = f.detector;
        ensure(
            f.crop != FaceCrop::Face || det != FaceDetectorKind::None,
            "data.face.crop",
            || {
                "`face` needs a face detector: set data.face.detector to dlib-hog or dlib-cnn"
                    .into()
            },
        )?;
        ensure(
            f.mask != FaceMask::Landmarks || det.is_dlib(),
            "data.face.mask",
            || {
                format!(
                    "`landmarks` needs landmarks, which data.face.detector {} does not give: \
                     use dlib-hog or dlib-cnn",
                    det.name()
                )
            },
        )?;
        positive(f.detect_every, "data.face.detect_every")?;
        ensure(
            f.detect_every == 1 || det.is_dlib(),
            "data.face.detect_every",
            || {
                format!(
                    "{} applies to a dlib detector, not {}",
                    f.detect_every,
                    det.name()
                )
            },
        )?;
        ensure(f.min_face >= 20, "data.face.min_face", || {
            format!(
                "{} is below 20 pixels (the detector would search a frame scaled by 80 / min_face)",
                f.min_face
            )
        })?;
        ensure(f.smooth_window % 2 == 1, "data.face.smooth_window", || {
            format!(
                "{} must be odd (a centred window; 1 turns smoothing off)",
                f.smooth_window
            )
        })?;
        ensure(
            f.crop != FaceCrop::Face || det != FaceDetectorKind::Boxes,
            "data.face.crop",
            || {
                "`face` with sidecar boxes is not supported: the boxes themselves are the crop; use crop: frame, or a dlib detector".into()
            },
        )?;
        ensure(
            f.margin >= 0.0 && f.margin <= 2.0,
            "data.face.margin",
            || format!("{} is outside [0, 2]", f.margin),
        )?;
        ensure(f.max_gap_s >= 0.0, "data.face.max_gap_s", || {
            format!("{} is negative", f.max_gap_s)
        })?;
        ensure(f.min_segment_s >= 0.0, "data.face.min_segment_s", || {
            format!("{} is negative", f.min_segment_s)
        })?;
        ensure(
            f.max_segment_s.is_finite()
                && f.max_segment_s > 0.0
                && f.max_segment_s >= 2.0 * f.min_segment_s,
            "data.face.max_segment_s",
            || {
                format!(
                    "{} must be positive and at least twice data.face.min_segment_s ({}), so that \
                     the equal parts of a long segment are never shorter than the shortest kept",
                    f.max_segment_s, f.min_segment_s
                )
            },
        )?;
        ensure(
            f.track_iou > 0.0 && f.track_iou < 1.0,
            "data.face.track_iou",
            || format!("{} is outside (0, 1)", f.track_iou),
        )?;
        ensure(f.scene_cut >= 0.0, "data.face.scene_cut", || {
            format!("{} is negative", f.scene_cut)
        })?;
        ensure(
            det != FaceDetectorKind::DlibCnn || f.cnn_model.is_some(),
            "data.face.cnn_model",
            || {
                "dlib-cnn needs the path of mmod_human_face_detector.dat (`bash ci/setup.sh` \
                 puts one in ~/.cache/syncdiff/models)"
                    .into()
            },
        )
    }

    fn validate_model(&self) -> Check {
        let m = &self.model;
        let ae = &m.autoencoder;
        ensure(
            !ae.block_out_channels.is_empty(),
            "model.autoencoder.block_out_channels",
            || "must list at least one level".into(),
        )?;
        positive(ae.latent_channels, "model.autoencoder.latent_channels")?;
        positive(ae.norm_num_groups, "model.autoencoder.norm_num_groups")?;
        if ae.kind == AutoencoderKind::VqF4 {
            for c in &ae.block_out_channels {
                ensure(
                    *c > 0 && c % ae.norm_num_groups == 0,
                    "model.autoencoder.block_out_channels",
                    || {
                        format!(
                            "{c} is not a positive multiple of norm_num_groups {}",
                            ae.norm_num_groups
                        )
                    },
                )?;
            }
        } else {
            ensure(
                ae.latent_channels == ae.in_channels,
                "model.autoencoder.latent_channels",
                || {
                    format!(
                        "the resample autoencoder keeps the image channels ({})",
                        ae.in_channels
                    )
                },
            )?;
        }

        let a = &m.audio_encoder;
        ensure(
            u64::from(a.input_dim) == super::MEL_DIM,
            "model.audio_encoder.input_dim",
            || {
                format!(
                "{} must be {} (26 filterbank energies x 4 stacked frames, what dataprep writes)",
                a.input_dim,
                super::MEL_DIM
            )
            },
        )?;
        positive(a.embed_dim, "model.audio_encoder.embed_dim")?;
        if a.kind == AudioEncoderKind::Avhubert {
            positive(a.heads, "model.audio_encoder.heads")?;
            ensure(
                a.embed_dim % a.heads == 0,
                "model.audio_encoder.heads",
                || format!("{} does not divide embed_dim {}", a.heads, a.embed_dim),
            )?;
            positive(a.pos_conv_groups, "model.audio_encoder.pos_conv_groups")?;
            ensure(
                a.embed_dim % a.pos_conv_groups == 0,
                "model.audio_encoder.pos_conv_groups",
                || {
                    format!(
                        "{} does not divide embed_dim {}",
                        a.pos_conv_groups, a.embed_dim
                    )
                },
            )?;
            ensure(
                a.frozen_layers <= a.layers,
                "model.audio_encoder.frozen_layers",
                || format!("{} exceeds the {} layers", a.frozen_layers, a.layers),
            )?;
        }
        unit_interval(a.dropout, "model.audio_encoder.dropout")?;
        unit_interval(a.attention_dropout, "model.audio_encoder.attention_dropout")?;
        unit_interval(
            a.activation_dropout,
            "model.audio_encoder.activation_dropout",
        )?;
        unit_interval(a.layerdrop, "model.audio_encoder.layerdrop")?;

        let t = &m.temporal;
        ensure(
            t.window > 0 && t.window % 2 == 0,
            "model.temporal.window",
            || {
                format!(
                    "{} must be a positive even number ([t - W/2, t + W/2))",
                    t.window
                )
            },
        )?;
        ensure(
            t.window <= a.context_frames,
            "model.audio_encoder.context_frames",
            || {
                format!(
                    "{} is shorter than the temporal window {}",
                    a.context_frames, t.window
                )
            },
        )?;
        positive(t.hidden, "model.temporal.hidden")?;

        self.validate_unet()?;

        let d = &m.diffusion;
        positive(d.timesteps, "model.diffusion.timesteps")?;
        ensure(
            0.0 < d.beta_start && d.beta_start < d.beta_end && d.beta_end < 1.0,
            "model.diffusion.beta_end",
            || {
                format!(
                    "need 0 < beta_start ({}) < beta_end ({}) < 1",
                    d.beta_start, d.beta_end
                )
            },
        )?;
        if m.priors.reference.uses_previous() {
            positive(m.priors.previous_frames, "model.priors.previous_frames")?;
        }
        let noise = m.priors.previous_noise;
        ensure(
            noise.is_finite() && noise >= 0.0,
            "model.priors.previous_noise",
            || format!("{noise}: must be >= 0"),
        )?;
        Ok(())
    }

    fn validate_unet(&self) -> Check {
        let u = &self.model.unet;
        ensure(
            !u.channel_mult.is_empty(),
            "model.unet.channel_mult",
            || "must list at least one level".into(),
        )?;
        positive(u.model_channels, "model.unet.model_channels")?;
        positive(u.head_dim, "model.unet.head_dim")?;
        positive(u.norm_num_groups, "model.unet.norm_num_groups")?;
        for c in u.block_out_channels() {
            ensure(
                c > 0 && c % u.norm_num_groups == 0,
                "model.unet.channel_mult",
                || {
                    format!(
                        "level width {c} is not a positive multiple of norm_num_groups {}",
                        u.norm_num_groups
                    )
                },
            )?;
            ensure(c % u.head_dim == 0, "model.unet.head_dim", || {
                format!("{} does not divide the level width {c}", u.head_dim)
            })?;
        }
        let deepest = 1u32 << (u.channel_mult.len() - 1);
        for r in &u.attention_resolutions {
            ensure(
                r.is_power_of_two() && *r <= deepest,
                "model.unet.attention_resolutions",
                || format!("{r} is not a downsampling factor of this UNet (1, 2, ..., {deepest})"),
            )?;
        }
        let side = self.latent_side();
        ensure(side % deepest == 0, "model.unet.channel_mult", || {
            format!(
                "{} levels downsample by {deepest}, which does not divide the latent side {side}",
                u.channel_mult.len()
            )
        })?;
        unit_interval(u.dropout, "model.unet.dropout")
    }

    fn validate_run(&self) -> Check {
        let t = &self.train;
        positive(t.global_batch, "train.global_batch")?;
        if let Some(m) = t.max_micro_batch {
            positive(m, "train.max_micro_batch")?;
        }
        positive(t.lr, "train.lr")?;
        ensure(t.min_lr >= 0.0 && t.min_lr <= t.lr, "train.min_lr", || {
            format!("{} is outside [0, train.lr = {}]", t.min_lr, t.lr)
        })?;
        unit_interval(t.betas[0], "train.betas")?;
        unit_interval(t.betas[1], "train.betas")?;
        positive(t.eps, "train.eps")?;
        ensure(t.weight_decay >= 0.0, "train.weight_decay", || {
            "must not be negative".into()
        })?;
        match t.steps {
            Some(s) => positive(s, "train.steps")?,
            None => positive(t.epochs, "train.epochs")?,
        }
        ensure(
            (0.0..1.0).contains(&t.audio_dropout),
            "train.audio_dropout",
            || format!("{}: must be in [0, 1)", t.audio_dropout),
        )?;
        if let Some(c) = t.grad_clip {
            positive(c, "train.grad_clip")?;
        }
        let ls = &t.loss_scale;
        ensure(
            ls.init_scale.is_finite() && ls.init_scale > 0.0,
            "train.loss_scale.init_scale",
            || format!("{}: must be a positive number", ls.init_scale),
        )?;
        ensure(
            ls.growth_factor.is_finite() && ls.growth_factor > 1.0,
            "train.loss_scale.growth_factor",
            || format!("{}: must be above 1", ls.growth_factor),
        )?;
        ensure(
            ls.backoff_factor > 0.0 && ls.backoff_factor < 1.0,
            "train.loss_scale.backoff_factor",
            || format!("{}: must be in (0, 1)", ls.backoff_factor),
        )?;
        positive(ls.growth_interval, "train.loss_scale.growth_interval")?;
        positive(t.max_nonfinite_steps, "train.max_nonfinite_steps")?;
        ensure(
            (0.0..=1.0).contains(&t.ema.decay),
            "train.ema.decay",
            || format!("{} is outside [0, 1]", t.ema.decay),
        )?;

        positive(self.dist.bucket_mb, "dist.bucket_mb")?;
        positive(self.dist.collective_timeout_s, "dist.collective_timeout_s")?;
        positive(self.dist.data_timeout_s, "dist.data_timeout_s")?;
        ensure(!self.checkpoint.url.is_empty(), "checkpoint.url", || {
            "must not be empty".into()
        })?;
        // Credentials come from the environment only: refuse them in the URL (without echoing).
        if let Some(problem) = super::url_secret_problem(&self.checkpoint.url) {
            return Err(("checkpoint.url".into(), problem.into()));
        }
        positive(self.checkpoint.keep_last, "checkpoint.keep_last")?;
        let lease = &self.checkpoint.lease;
        positive(lease.renew_s, "checkpoint.lease.renew_s")?;
        ensure(
            lease.expire_s > self.dist.collective_timeout_s,
            "checkpoint.lease.expire_s",
            || {
                format!(
                    "{} must be longer than dist.collective_timeout_s ({}): a job waiting in a \
                     collective still holds its lease",
                    lease.expire_s, self.dist.collective_timeout_s
                )
            },
        )?;
        ensure(
            lease.renew_s.saturating_mul(3) <= lease.expire_s,
            "checkpoint.lease.renew_s",
            || {
                format!(
                    "{} is too long for checkpoint.lease.expire_s {}: renew at least three \
                     times per expiry",
                    lease.renew_s, lease.expire_s
                )
            },
        )?;
        positive(self.checkpoint.retries, "checkpoint.retries")?;
        ensure(
            self.checkpoint.retry_backoff_s >= 0.0,
            "checkpoint.retry_backoff_s",
            || "must not be negative".into(),
        )?;
        if let Some(k) = self.checkpoint.keep_every {
            positive(k, "checkpoint.keep_every")?;
        }
        positive(self.log.interval, "log.interval")?;

        let s = &self.sample;
        ensure(
            s.ddim_steps > 0 && s.ddim_steps <= self.model.diffusion.timesteps,
            "sample.ddim_steps",
            || {
                format!(
                    "{} is outside [1, model.diffusion.timesteps = {}]",
                    s.ddim_steps, self.model.diffusion.timesteps
                )
            },
        )?;
        ensure(s.eta >= 0.0, "sample.eta", || "must not be negative".into())?;
        ensure(
            s.eta == 0.0 || s.sampler == super::SamplerKind::Ddim,
            "sample.eta",
            || {
                format!(
                    "{}: stochastic steps are DDIM's; {} is deterministic (set 0)",
                    s.eta,
                    s.sampler.name()
                )
            },
        )?;
        ensure(
            s.guidance.is_finite() && s.guidance >= 1.0,
            "sample.guidance",
            || format!("{}: must be at least 1 (1: no guidance)", s.guidance),
        )?;
        ensure(
            s.guidance == 1.0 || self.train.audio_dropout > 0.0,
            "sample.guidance",
            || {
                format!(
                    "{}: guidance needs the null audio context that train.audio_dropout > 0 \
                     learns (train.audio_dropout is 0)",
                    s.guidance
                )
            },
        )
    }
}
