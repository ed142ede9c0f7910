//! Runs and the checkpoint location: which checkpoints stand in the way of a starting run, and
//! moving them aside on request (never deleting them).
//!
//! A location (`checkpoint.url`) holds one lineage: every checkpoint records the run that wrote
//! it, and retention only ever deletes the current run's own older checkpoints. So a run may not
//! start where it would mix with others:
//!
//! | the run starts                               | in the way                                   |
//! |----------------------------------------------|----------------------------------------------|
//! | fresh (`--resume never`, or `auto` on nothing)| every valid checkpoint there                 |
//! | from step S (`auto` or a URL)                | valid checkpoints newer than S; those of another run |
//!
//! Checkpoints in the way are refused with a message that says what is there; with
//! `--move-aside` they go to `<url>/set-aside/<UTC time>/step-N/`, which `--resume auto`, `ckpt
//! list` and retention never look into (resume one of them explicitly with its URL).

use super::format::{self, MANIFEST};
use super::load::Listed;
use super::CkptError;
use super::Store;

/// Directory under a checkpoint URL that holds checkpoints moved out of the way.
pub const SET_ASIDE: &str = "set-aside";

/// How the run starts.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// From nothing.
    Fresh,
    /// From the checkpoint of step `step` written by run `run` (None: an older build).
    From {
        /// Step resumed.
        step: u64,
        /// Its run.
        run: Option<&'a str>,
    },
}

/// The valid checkpoints of `listed` (one location) that stand in the way of `start`.
pub fn in_the_way<'a>(listed: &'a [Listed], start: Start<'_>) -> Vec<&'a Listed> {
    listed
        .iter()
        .filter(|c| match (&c.manifest, start) {
            (None, _) => false,
            (Some(_), Start::Fresh) => true,
            (Some(m), Start::From { step, run }) => {
                let other_run = matches!((m.run.as_deref(), run), (Some(a), Some(b)) if a != b);
                c.step > step || other_run
            }
        })
        .collect()
}

/// `step-000000015, step-000000020 of run-...` for messages: at most four names, each run
/// named once after its steps.
pub fn describe(found: &[&Listed]) -> String {
    let run = |c: &Listed| c.manifest.as_ref().and_then(|m| m.run.clone());
    let mut parts: Vec<String> = Vec::new();
    let shown = &found[..found.len().min(4)];
    for (i, c) in shown.iter().enumerate() {
        let mut part = c.dir.clone();
        let next_same = shown.get(i + 1).is_some_and(|n| run(n) == run(c));
        if !next_same {
            if let Some(r) = run(c) {
                part += &format!(" of {r}");
            }
        }
        parts.push(part);
    }
    if found.len() > 4 {
        parts.push(format!("and {} more", found.len() - 4));
    }
    parts.join(", ")
}

/// Moves `found` to `<url>/set-aside/<UTC time>/`; returns that URL. Each checkpoint is copied
/// whole (manifest last) before its original loses its manifest and then its files, so a
/// failure half-way leaves it valid in at least one place.
pub fn set_aside(store: &Store, found: &[&Listed]) -> Result<String, CkptError> {
    let mut stamp = format::utc_stamp(format::now_unix());
    let taken = store.list_files(SET_ASIDE)?;
    while taken
        .iter()
        .any(|(n, _)| n.starts_with(&format!("{stamp}/")))
    {
        stamp.push('x');
    }
    let dest = format!("{SET_ASIDE}/{stamp}");
    for c in found {
        let files = store.list_files(&c.dir)?;
        let to = |name: &str| format!("{dest}/{}/{name}", c.dir);
        for (name, _) in files.iter().filter(|(n, _)| n != MANIFEST) {
            store.copy(&format!("{}/{name}", c.dir), &to(name))?;
        }
        store.copy(&format!("{}/{MANIFEST}", c.dir), &to(MANIFEST))?;
        store.delete(&format!("{}/{MANIFEST}", c.dir))?;
        store.delete_dir(&c.dir)?;
    }
    Ok(store.display(&dest))
}
