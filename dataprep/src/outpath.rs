//! Output paths that never clobber what they do not own. A command's output (a video, a report,
//! a bundle or data set directory) is checked before any work:
//!
//! - a symbolic link is written through: the file it points to is replaced, the link is kept;
//! - a device node, FIFO or socket is refused (writing would block, fail late, or, with a
//!   rename, replace the node with a regular file);
//! - a regular file is replaced atomically (written beside it, then renamed over it);
//! - a file where a directory is expected, or a directory where a file is, is refused.

use std::path::{Path, PathBuf};

/// Symbolic links followed before giving up (the kernel's own limit is 40).
const MAX_LINKS: usize = 40;

/// Why an output path cannot be used. The message names the path as the user gave it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct OutPathError {
    /// The path as given.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

fn err(path: &Path, message: impl Into<String>) -> OutPathError {
    OutPathError {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// What kind of thing, other than a regular file, directory or symbolic link, `ft` is.
fn special(ft: &std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_char_device() {
        Some("a character device")
    } else if ft.is_block_device() {
        Some("a block device")
    } else if ft.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if ft.is_socket() {
        Some("a socket")
    } else {
        None
    }
}

/// The path that `path` finally names after following symbolic links (the last link's target
/// when it does not exist yet); `path` itself when it is not a link.
pub fn follow_links(path: &Path) -> Result<PathBuf, OutPathError> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)
                    .map_err(|e| err(path, format!("cannot read the link: {e}")))?;
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(err(path, format!("more than {MAX_LINKS} symbolic links")))
}

/// Checks an output *file* before any work and returns the regular file to replace: `path`, or
/// the file its symbolic links lead to. Refuses a directory, a device node, a FIFO or a socket.
pub fn output_file(path: &Path) -> Result<PathBuf, OutPathError> {
    let target = follow_links(path)?;
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => Err(err(path, "is a directory; give a file name")),
        Ok(m) => match special(&m.file_type()) {
            Some(kind) => Err(err(
                path,
                format!("is {kind}, not a regular file; refusing to write over it"),
            )),
            None => Ok(target),
        },
        Err(_) => Ok(target),
    }
}

/// Checks an output *directory* before any work and returns the directory to write into (after
/// symbolic links). It may not exist yet; when it does, it must be a directory.
pub fn output_dir(path: &Path) -> Result<PathBuf, OutPathError> {
    let target = follow_links(path)?;
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => Ok(target),
        Ok(m) => Err(err(
            path,
            match special(&m.file_type()) {
                Some(kind) => format!("is {kind}, not a directory; refusing to write into it"),
                None => "is a file, not a directory".to_string(),
            },
        )),
        Err(_) => Ok(target),
    }
}

/// The temporary name a file is written under until it is complete: hidden, beside `target`
/// (same directory, so the final rename is atomic), unique per process.
pub fn partial_name(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".partial.{}.{name}", std::process::id()))
}

/// Creates the directory `target` goes in (the error names that directory).
fn create_parent(target: &Path) -> Result<(), OutPathError> {
    match target.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create: {e}")))
        }
        None => Ok(()),
    }
}

/// Prepares an output file before any work goes into it: checked as [`output_file`], its
/// directory created, and a file written and removed beside it (so that a place that cannot
/// be written fails now, not at the end). Returns the file to replace.
pub fn prepare_file(path: &Path) -> Result<PathBuf, OutPathError> {
    let target = output_file(path)?;
    create_parent(&target)?;
    let probe = partial_name(&target);
    std::fs::File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| err(path, format!("cannot write here: {e}")))?;
    Ok(target)
}

/// Writes `bytes` to the output file `path` atomically: checked as [`output_file`], written
/// beside the file it names, then renamed over it (a symbolic link keeps pointing at it).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutPathError> {
    let target = output_file(path)?;
    create_parent(&target)?;
    let tmp = partial_name(&target);
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &target))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(path, format!("cannot write: {e}"))
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::{symlink, FileTypeExt};

    #[test]
    fn links_are_written_through_and_special_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("results")).unwrap();
        std::fs::write(d.join("results/x.json"), b"old").unwrap();
        symlink("results/x.json", d.join("out.json")).unwrap();
        write_atomic(&d.join("out.json"), b"new").unwrap();
        assert!(std::fs::symlink_metadata(d.join("out.json"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(d.join("results/x.json")).unwrap(), b"new");
        // A dangling link: its target is created.
        symlink(d.join("results/y.json"), d.join("dangling.json")).unwrap();
        write_atomic(&d.join("dangling.json"), b"y").unwrap();
        assert_eq!(std::fs::read(d.join("results/y.json")).unwrap(), b"y");
        // A FIFO: refused, untouched (writing to it would block).
        let fifo = d.join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let e = write_atomic(&fifo, b"z").unwrap_err().to_string();
        assert!(
            e.ends_with(
                "fifo: is a FIFO (named pipe), not a regular file; refusing to write over it"
            ),
            "{e}"
        );
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(output_dir(&fifo).is_err());
        // A link to a directory is a directory; a file is not.
        symlink("results", d.join("res")).unwrap();
        assert_eq!(output_dir(&d.join("res")).unwrap(), d.join("results"));
        assert!(output_file(&d.join("res")).is_err());
        let e = output_dir(&d.join("results/x.json"))
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("is a file, not a directory"), "{e}");
        // A loop of links.
        symlink("b", d.join("a")).unwrap();
        symlink("a", d.join("b")).unwrap();
        assert!(output_file(&d.join("a")).is_err());
    }
}
