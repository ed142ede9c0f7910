//! What may change when a run resumes. The model, the data set, the seed, the global batch and
//! the epoch unit may not (the weights, the sample order and the loader position depend on
//! them); everything else may: learning-rate schedule and length, intervals, URLs and paths,
//! logging, the distributed settings, sampling, and `train.audio_dropout` as long as it stays
//! on (or off). The world size may change when it divides the
//! global batch.

use std::collections::BTreeMap;

use syncdiff_model::config::Config;

use super::format::TrainerState;

/// Keys of `model` that name files, not shapes: they may differ between clusters.
const PATHS: &[&str] = &["autoencoder.weights", "audio_encoder.weights"];

/// Every leaf of `v` as `dotted.key -> JSON text`, keys sorted (for comparing configurations).
pub fn flatten(v: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, x, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

/// Checks that a checkpoint (its state and resolved config) can continue the run of `now`
/// on data set `dataset_sha256`. The error names the first key that differs.
pub fn check_compatible(
    state: &TrainerState,
    saved_config: &Config,
    now: &Config,
    dataset_sha256: &str,
) -> Result<(), String> {
    if state.dataset_sha256 != dataset_sha256 {
        return Err(format!(
            "data.dataset differs: the checkpoint was trained on a data set whose manifest has \
             sha256 {}, data.dataset has {dataset_sha256}",
            state.dataset_sha256
        ));
    }
    let fixed = [
        (
            "train.seed",
            state.seed.to_string(),
            now.train.seed.to_string(),
        ),
        (
            "train.global_batch",
            state.global_batch.to_string(),
            now.train.global_batch.to_string(),
        ),
        (
            "train.epoch_unit",
            format!("{:?}", saved_config.train.epoch_unit),
            format!("{:?}", now.train.epoch_unit),
        ),
    ];
    for (key, was, is) in fixed {
        if was != is {
            return Err(format!(
                "{key} is {is}, the checkpoint has {was}; it cannot change on resume (the sample \
                 order and loader position depend on it)"
            ));
        }
    }
    let (was, is) = (saved_config.train.audio_dropout, now.train.audio_dropout);
    if (was > 0.0) != (is > 0.0) {
        return Err(format!(
            "train.audio_dropout is {is}, the checkpoint has {was}; audio dropout cannot be \
             switched on or off on resume (it adds the null_context parameter); its value may \
             change"
        ));
    }
    // A configuration that cannot be written as JSON refuses the resume: nothing unchecked.
    let as_json = |c: &Config, whose: &str| {
        serde_json::to_value(&c.model)
            .map(|v| flatten(&v))
            .map_err(|e| format!("cannot compare the model settings ({whose}): {e}"))
    };
    let (was, is) = (
        as_json(saved_config, "the checkpoint's")?,
        as_json(now, "this run's")?,
    );
    for (k, a) in &was {
        let b = is.get(k).map_or("-", String::as_str);
        if a != b && !PATHS.contains(&k.as_str()) {
            return Err(format!(
                "model.{k} is {b}, the checkpoint has {a}; the model cannot change on resume"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use syncdiff_model::config::Override;

    fn config(sets: &[&str]) -> Config {
        let sets: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/debug.yaml");
        Config::load(&path, &sets).unwrap()
    }

    fn state(c: &Config) -> TrainerState {
        TrainerState {
            format: 1,
            step: 10,
            epoch: 0,
            consumed: 40,
            seed: c.train.seed,
            world_size: 2,
            global_batch: c.train.global_batch,
            dataset_sha256: "abc".into(),
            external_weights: Default::default(),
            saved_unix: 0,
            run: None,
            loss_scale: None,
        }
    }

    #[test]
    fn schedule_paths_and_world_size_may_change() {
        let saved = config(&[]);
        let now = config(&[
            "train.lr=1e-5",
            "train.steps=99",
            "checkpoint.url=s3://other/run",
            "log.interval=7",
            "model.autoencoder.weights=/elsewhere/vq.safetensors",
        ]);
        check_compatible(&state(&saved), &saved, &now, "abc").unwrap();
    }

    #[test]
    fn model_data_seed_and_batch_may_not() {
        let saved = config(&[]);
        let st = state(&saved);
        let e = check_compatible(
            &st,
            &saved,
            &config(&["model.unet.model_channels=32"]),
            "abc",
        )
        .unwrap_err();
        assert!(
            e.starts_with("model.unet.model_channels is 32, the checkpoint has 16"),
            "{e}"
        );
        let e = check_compatible(&st, &saved, &saved, "def").unwrap_err();
        assert!(e.starts_with("data.dataset differs"), "{e}");
        let e =
            check_compatible(&st, &saved, &config(&["train.global_batch=8"]), "abc").unwrap_err();
        assert!(
            e.starts_with("train.global_batch is 8, the checkpoint has 4"),
            "{e}"
        );
        let e = check_compatible(&st, &saved, &config(&["train.seed=5"]), "abc").unwrap_err();
        assert!(e.starts_with("train.seed is 5"), "{e}");
    }

    #[test]
    fn audio_dropout_may_change_but_not_switch_on_or_off() {
        let saved = config(&[]);
        let on = config(&["train.audio_dropout=0.1"]);
        let e = check_compatible(&state(&saved), &saved, &on, "abc").unwrap_err();
        assert!(
            e.starts_with("train.audio_dropout is 0.1, the checkpoint has 0;"),
            "{e}"
        );
        let e = check_compatible(&state(&on), &on, &saved, "abc").unwrap_err();
        assert!(e.starts_with("train.audio_dropout is 0, the checkpoint has 0.1;"));
        let more = config(&["train.audio_dropout=0.2"]);
        check_compatible(&state(&on), &on, &more, "abc").unwrap();
    }
}
