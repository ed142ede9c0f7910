//! Where clips come from: LRS2's layout, or a plain folder of videos (LRS3, a user's own
//! recordings).
//!
//! ```text
//! lrs2:    ROOT/{train,val,test}.txt (lines <speaker>/<clip>), ROOT/main/<speaker>/<clip>.mp4
//! videos:  ROOT/**/*.{mp4,mov,mkv,webm,avi,m4v}, any frame rate and size; the id of a clip is
//!          its path under ROOT (`interviews/alice.mov`). ROOT/<split>.txt, when present, lists
//!          the ids to take (one per line); otherwise every video under ROOT, sorted.
//! ```

use std::path::{Path, PathBuf};

/// File extensions the `videos` layout takes as videos.
pub const VIDEO_EXTENSIONS: &[&str] = &["mp4", "mov", "mkv", "webm", "avi", "m4v"];

/// A source layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// LRS2: filelists and `main/`; 25 fps required (a clip at another rate is `wrong_fps`).
    #[default]
    Lrs2,
    /// Any folder of videos; frames are resampled to `data.fps`.
    Videos,
}

impl Layout {
    /// The name of the subcommand.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lrs2 => "lrs2",
            Self::Videos => "videos",
        }
    }

    /// The video file of clip `id`.
    pub fn clip_path(self, root: &Path, id: &str) -> PathBuf {
        match self {
            Self::Lrs2 => root.join("main").join(format!("{id}.mp4")),
            Self::Videos => root.join(id),
        }
    }

    /// Whether frames are resampled to the configured rate (else a different rate is refused).
    pub fn resamples(self) -> bool {
        self == Self::Videos
    }

    /// The clip ids of a split; the error names the file or directory that could not be read.
    pub fn clip_ids(
        self,
        root: &Path,
        split: &str,
    ) -> Result<Vec<String>, (PathBuf, std::io::Error)> {
        let list = root.join(format!("{split}.txt"));
        if self == Self::Lrs2 || list.is_file() {
            let text = std::fs::read_to_string(&list).map_err(|e| (list.clone(), e))?;
            // LRS2 lines may carry extra tokens; a video's path may hold spaces.
            return Ok(text
                .lines()
                .filter_map(|l| match self {
                    Self::Lrs2 => l.split_whitespace().next(),
                    Self::Videos => Some(l.trim()).filter(|l| !l.is_empty()),
                })
                .map(str::to_string)
                .collect());
        }
        let mut ids = Vec::new();
        walk(root, root, &mut ids)?;
        ids.sort();
        Ok(ids)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), (PathBuf, std::io::Error)> {
    let entries = std::fs::read_dir(dir).map_err(|e| (dir.to_path_buf(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| (dir.to_path_buf(), e))?;
        let path = entry.path();
        // Real directories only: a symlinked one could loop.
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            walk(root, &path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            if let Some(rel) = path.strip_prefix(root).ok().and_then(|r| r.to_str()) {
                out.push(rel.to_string());
            }
        }
    }
    Ok(())
}
