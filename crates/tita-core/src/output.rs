//! Output folders and files of long runs (training, pair synthesis, benchmarks, the demo): a
//! run never writes into another run's output, and two processes never share one.
//!
//! A fresh run refuses a non-empty folder (or an existing file); `Reuse::Resume` continues the
//! run found there (the caller checks that its settings match); `Reuse::Overwrite` clears it
//! first. An OS advisory lock (released by the kernel when the process dies, so a killed run
//! leaves no stale lock) keeps a second process out while the first runs.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What to do with an output that already holds files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reuse {
    /// Refuse unless the output is new or empty.
    #[default]
    Fresh,
    /// Continue the run it holds (`--resume`).
    Resume,
    /// Delete what it holds first (`--overwrite`).
    Overwrite,
}

impl Reuse {
    /// From the two flags of a command line; both at once is an error.
    pub fn from_flags(resume: bool, overwrite: bool) -> Result<Self> {
        match (resume, overwrite) {
            (true, true) => Err(Error::argument(
                "overwrite",
                "--resume continues a run and --overwrite deletes it: give one",
            )),
            (true, false) => Ok(Reuse::Resume),
            (false, true) => Ok(Reuse::Overwrite),
            (false, false) => Ok(Reuse::Fresh),
        }
    }
}

/// Name of the lock file inside an output folder.
pub const LOCK_FILE: &str = ".tita.lock";

/// A claimed output; the lock is held until this is dropped.
#[derive(Debug)]
pub struct Claim {
    _lock: File,
}

/// Claims the folder `dir` for one run (created if missing).
pub fn claim_dir(dir: &Path, reuse: Reuse) -> Result<Claim> {
    if dir.is_file() {
        return Err(Error::argument(
            "out",
            format!(
                "{} is a file; give a folder for the run's outputs",
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = lock(&lock_path, dir)?;
    let held = entries(dir)?;
    if reuse == Reuse::Overwrite {
        refuse_project_dir(dir)?;
    }
    let refusal = || {
        Error::checkpoint(
            dir,
            format!(
                "holds another run's files ({}); pass --resume to continue that run or --overwrite to delete them first",
                list(&held)
            ),
        )
    };
    let paths: Vec<PathBuf> = held.iter().map(|name| dir.join(name)).collect();
    settle(lock, &lock_path, &paths, reuse, refusal)
}

/// Claims the output file `file` and its companions (`file` + each of `companions`, e.g.
/// `.progress.json`); the lock is `file.lock`.
pub fn claim_file(file: &Path, companions: &[&str], reuse: Reuse) -> Result<Claim> {
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let lock_path = with_suffix(file, ".lock");
    let lock = lock(&lock_path, file)?;
    let held: Vec<PathBuf> = std::iter::once(file.to_path_buf())
        .chain(companions.iter().map(|c| with_suffix(file, c)))
        .filter(|p| p.exists())
        .collect();
    let refusal = || {
        Error::checkpoint(
            file,
            "exists (another run's output); pass --resume to continue that run or --overwrite to replace it",
        )
    };
    settle(lock, &lock_path, &held, reuse, refusal)
}

/// Applies `reuse` to the paths an output already holds: keep them (resume, or nothing there),
/// refuse (leaving no lock file behind, so a refused run changes nothing), or delete them.
fn settle(
    lock: File,
    lock_path: &Path,
    held: &[PathBuf],
    reuse: Reuse,
    refusal: impl FnOnce() -> Error,
) -> Result<Claim> {
    match reuse {
        Reuse::Fresh if !held.is_empty() => {
            let _ = std::fs::remove_file(lock_path);
            return Err(refusal());
        }
        Reuse::Overwrite => {
            for path in held {
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(path)
                } else {
                    std::fs::remove_file(path)
                };
                removed.map_err(|e| Error::io(path, e))?;
            }
        }
        Reuse::Fresh | Reuse::Resume => {}
    }
    Ok(Claim { _lock: lock })
}

/// `path` with `suffix` appended to its file name (`pairs.jsonl` -> `pairs.jsonl.lock`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn lock(path: &Path, output: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::checkpoint(
            output,
            format!(
                "another process is writing here (it holds the lock {}); wait for it to finish or use another output",
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let name = entry
            .map_err(|e| Error::io(dir, e))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name != LOCK_FILE {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn list(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
    let more = names.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{}, and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// `--overwrite` deletes a folder's contents: never a source tree's.
fn refuse_project_dir(dir: &Path) -> Result<()> {
    for marker in [".git", "Cargo.toml"] {
        if dir.join(marker).exists() {
            return Err(Error::checkpoint(
                dir,
                format!("holds `{marker}`: not an output folder; --overwrite will not delete it"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tita-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn folders_are_claimed_once_and_never_mixed() {
        let dir = temp("dir");
        let claim = claim_dir(&dir, Reuse::Fresh).unwrap();
        // A second process (here: a second claim) is kept out while the first holds it.
        let err = claim_dir(&dir, Reuse::Resume).unwrap_err().to_string();
        assert!(err.contains("another process is writing here"), "{err}");
        std::fs::write(dir.join("metrics.jsonl"), "{}\n").unwrap();
        drop(claim);
        let err = claim_dir(&dir, Reuse::Fresh).unwrap_err().to_string();
        assert!(
            err.contains("holds another run's files (metrics.jsonl)") && err.contains("--resume"),
            "{err}"
        );
        assert!(
            dir.join("metrics.jsonl").exists(),
            "a refused run deletes nothing"
        );
        drop(claim_dir(&dir, Reuse::Resume).unwrap());
        assert!(dir.join("metrics.jsonl").exists());
        drop(claim_dir(&dir, Reuse::Overwrite).unwrap());
        assert_eq!(entries(&dir).unwrap(), Vec::<String>::new());
        std::fs::write(dir.join("Cargo.toml"), "").unwrap();
        assert!(claim_dir(&dir, Reuse::Overwrite).is_err());
        assert!(dir.join("Cargo.toml").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_and_their_companions() {
        let dir = temp("file");
        let file = dir.join("pairs.jsonl");
        drop(claim_file(&file, &[".progress.json"], Reuse::Fresh).unwrap());
        std::fs::write(with_suffix(&file, ".progress.json"), "{}").unwrap();
        let err = claim_file(&file, &[".progress.json"], Reuse::Fresh)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pairs.jsonl: exists"), "{err}");
        drop(claim_file(&file, &[".progress.json"], Reuse::Overwrite).unwrap());
        assert!(!with_suffix(&file, ".progress.json").exists());
        assert_eq!(
            Reuse::from_flags(true, true).unwrap_err().to_string(),
            "invalid argument `overwrite`: --resume continues a run and --overwrite deletes it: give one"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
