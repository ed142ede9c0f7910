//! Word error rate against LRS2 transcripts, for an external lip-reading scorer given as a
//! command (`--wer-cmd 'lipread --video {video}'`): the command's last non-empty stdout line is
//! its transcript of the video.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// One video's transcripts and word errors.
#[derive(Debug, Clone, Serialize)]
pub struct Wer {
    /// Reference transcript (upper case).
    pub reference: String,
    /// The scorer's transcript (upper case).
    pub hypothesis: String,
    /// Word substitutions + deletions + insertions.
    pub errors: usize,
    /// Words in the reference.
    pub words: usize,
}

/// Why a reference could not be read or the lip reader could not score a video.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// A reference file cannot be read.
    #[error("{}: {message}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
    /// A line of a reference file does not parse.
    #[error("{} line {line}: {message}", path.display())]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// The line, from 1.
        line: usize,
        /// Why.
        message: String,
    },
    /// The lip reader (`--wer-cmd`) cannot be run or failed.
    #[error("{message}")]
    LipReader {
        /// What happened, naming `--wer-cmd` and the command line.
        message: String,
    },
}

/// Reads an LRS2 transcript: the `Text:` line of `<clip>.txt`, or the first line of another file.
pub fn read_reference(path: &Path) -> Result<String, ReferenceError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReferenceError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Text:"))
        .or_else(|| text.lines().next())
        .unwrap_or("");
    Ok(normalise(line))
}

fn normalise(s: &str) -> String {
    s.split_whitespace()
        .map(str::to_uppercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Word-level edit distance.
pub fn edit_distance(reference: &[&str], hypothesis: &[&str]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut row = vec![i + 1; hypothesis.len() + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            let sub = prev[j] + usize::from(r != h);
            row[j + 1] = sub.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        prev = row;
    }
    prev[hypothesis.len()]
}

/// Runs `command` (`{video}` replaced by the quoted path) through `sh -c` and scores its output.
pub fn score(command: &str, video: &Path, reference: &str) -> Result<Wer, ReferenceError> {
    let quoted = format!("'{}'", video.display().to_string().replace('\'', r"'\''"));
    let line = command.replace("{video}", &quoted);
    let out = Command::new("sh")
        .args(["-c", &line])
        .output()
        .map_err(|e| ReferenceError::LipReader {
            message: format!("--wer-cmd: cannot run sh: {e}"),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(ReferenceError::LipReader {
            message: format!(
                "--wer-cmd `{line}` failed ({}): {}",
                out.status,
                err.lines().last().unwrap_or("")
            ),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let hypothesis = normalise(
        stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or(""),
    );
    let r: Vec<&str> = reference.split_whitespace().collect();
    let h: Vec<&str> = hypothesis.split_whitespace().collect();
    Ok(Wer {
        errors: edit_distance(&r, &h),
        words: r.len(),
        reference: reference.to_string(),
        hypothesis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_word_edits() {
        let r = ["THE", "CAT", "SAT", "DOWN"];
        assert_eq!(edit_distance(&r, &r), 0);
        assert_eq!(edit_distance(&r, &["THE", "HAT", "SAT", "DOWN"]), 1);
        assert_eq!(edit_distance(&r, &["THE", "SAT"]), 2);
        assert_eq!(
            edit_distance(&r, &["A", "THE", "CAT", "SAT", "DOWN", "NOW"]),
            2
        );
        assert_eq!(edit_distance(&[], &["X"]), 1);
    }
}
