//! The face settings generation runs with: the model's own (what it was trained with), with
//! `--set data.face.KEY=VALUE` overrides, and the keys where they depart from training.

use syncdiff_model::config::{Config, ConfigError, FaceConfig, Override};

use super::GenerateError;

/// Keys that name files on this machine: changing them is not a change of alignment.
const PATHS: &[&str] = &["landmarks_model", "cnn_model"];

/// The face settings for `sets` (`data.face.KEY=VALUE` each) on top of the model's, validated
/// as a configuration file would be; and, per key that differs from the training settings, a
/// line `data.face.KEY: VALUE (trained with VALUE)`.
pub fn face_settings(
    trained: &Config,
    sets: &[String],
) -> Result<(FaceConfig, Vec<String>), GenerateError> {
    let overrides = sets
        .iter()
        .map(|s| {
            let o = Override::parse(s)?;
            if o.path.len() != 3 || o.path[0] != "data" || o.path[1] != "face" {
                return Err(ConfigError::BadOverride {
                    arg: o.arg,
                    message: "generation takes only data.face.KEY overrides (the model's other \
                              settings are what it was trained with)"
                        .into(),
                });
            }
            Ok(o)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if overrides.is_empty() {
        return Ok((trained.data.face.clone(), Vec::new()));
    }
    let config = Config::from_yaml(&trained.to_yaml(), "the model's configuration", &overrides)?;
    let face = config.data.face;
    let value = |f: &FaceConfig| serde_json::to_value(f).unwrap_or_default();
    let (new, old) = (value(&face), value(&trained.data.face));
    let mut departures = Vec::new();
    if let (Some(new), Some(old)) = (new.as_object(), old.as_object()) {
        for (key, v) in new {
            let before = old.get(key).cloned().unwrap_or_default();
            if *v != before && !PATHS.contains(&key.as_str()) {
                departures.push(format!("data.face.{key}: {v} (trained with {before})"));
            }
        }
    }
    Ok((face, departures))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn debug() -> Config {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/debug.yaml");
        Config::load(std::path::Path::new(root), &[]).unwrap()
    }

    #[test]
    fn overrides_are_applied_validated_and_departures_named() {
        let c = debug();
        let (same, d) = face_settings(&c, &[]).unwrap();
        assert_eq!(same, c.data.face);
        assert!(d.is_empty());
        let sets = [
            "data.face.detector=dlib-hog".to_string(),
            "data.face.crop=face".to_string(),
            "data.face.landmarks_model=/elsewhere/lm.dat".to_string(),
        ];
        let (f, d) = face_settings(&c, &sets).unwrap();
        assert_eq!(f.crop.name(), "face");
        assert_eq!(f.landmarks_model, "/elsewhere/lm.dat");
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d.iter()
                .any(|l| l == "data.face.detector: \"dlib-hog\" (trained with \"none\")"),
            "{d:?}"
        );
        let err = face_settings(&c, &["train.steps=3".to_string()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--set train.steps=3: generation takes only data.face"),
            "{err}"
        );
        let err = face_settings(&c, &["data.face.smooth_window=4".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.face.smooth_window"), "{err}");
    }
}
