//! Output folders and files of long runs (training, pair synthesis, benchmarks, the demo): a
//! run never writes into another run's output, and two processes never share one.
//!
//! A fresh run refuses a non-empty folder (or an existing file); `Reuse::Resume` continues the
//! run found there (the caller checks that its settings match); `Reuse::Overwrite` deletes what
//! earlier runs wrote there (a folder's manifest, `.tita-run.json`, says what that is) and
//! refuses a folder that holds anything else. An OS advisory lock (released by the kernel when the process dies, so a killed run
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

/// Name of the manifest inside an output folder: what the run wrote there, so that
/// `--overwrite` deletes a run's outputs and nothing else.
pub const MANIFEST_FILE: &str = ".tita-run.json";

/// An output folder's record of ownership. A run claims a folder that is new, empty or a run's
/// (the only files there are owned), so what appears while it holds the claim is its own;
/// `owned` is written when the claim ends. A run killed mid-way leaves `owned: null`: then
/// everything but `foreign` (what was there and not a run's when it started) is the run's.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Manifest {
    owned: Option<Vec<String>>,
    #[serde(default)]
    foreign: Vec<String>,
}

/// A claimed output; the lock is held until this is dropped.
#[derive(Debug)]
pub struct Claim {
    _lock: File,
    /// A claimed folder: its path and the entries that are not the run's.
    folder: Option<(PathBuf, Vec<String>)>,
}

impl Drop for Claim {
    /// Records what the run wrote, for a later `--overwrite`.
    fn drop(&mut self) {
        let Some((dir, foreign)) = &self.folder else {
            return;
        };
        let written = entries(dir).map(|present| Manifest {
            owned: Some(
                present
                    .into_iter()
                    .filter(|n| !foreign.contains(n))
                    .collect(),
            ),
            foreign: foreign.clone(),
        });
        if let Err(e) = written.and_then(|m| write_manifest(dir, &m)) {
            eprintln!("warning: could not record this run's files: {e}");
        }
    }
}

/// Claims the folder `dir` for one run (created if missing). `--overwrite` (`Reuse::Overwrite`)
/// deletes what earlier runs wrote there, and refuses a folder that holds anything else.
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
    let refuse = |err: Error| -> Result<Claim> {
        let _ = std::fs::remove_file(&lock_path);
        Err(err)
    };
    let held = entries(dir)?;
    let manifest = match read_manifest(dir) {
        Ok(m) => m,
        Err(e) => return refuse(e),
    };
    let foreign: Vec<String> = match &manifest {
        Some(Manifest {
            owned: Some(owned), ..
        }) => held
            .iter()
            .filter(|n| !owned.contains(n))
            .cloned()
            .collect(),
        Some(Manifest {
            owned: None,
            foreign,
        }) => held
            .iter()
            .filter(|n| foreign.contains(n))
            .cloned()
            .collect(),
        None => held.clone(),
    };
    let not_a_run = |what: &str| {
        Error::checkpoint(
            dir,
            format!("holds files that no run wrote ({}); {what}", list(&foreign)),
        )
    };
    let foreign = match reuse {
        Reuse::Fresh if !held.is_empty() && foreign.is_empty() => {
            return refuse(Error::checkpoint(
                dir,
                format!(
                    "holds another run's files ({}); pass --resume to continue that run or --overwrite to delete them first",
                    list(&held)
                ),
            ))
        }
        Reuse::Fresh if !foreign.is_empty() => {
            return refuse(not_a_run("give a new or empty folder for this run's outputs"))
        }
        Reuse::Overwrite if !foreign.is_empty() => {
            return refuse(not_a_run(
                "--overwrite deletes only a run's own outputs: move them, or give another folder",
            ))
        }
        Reuse::Overwrite => {
            held.iter().try_for_each(|name| remove(&dir.join(name)))?;
            Vec::new()
        }
        Reuse::Fresh | Reuse::Resume => foreign,
    };
    let running = Manifest {
        owned: None,
        foreign: foreign.clone(),
    };
    if let Err(e) = write_manifest(dir, &running) {
        return refuse(e);
    }
    Ok(Claim {
        _lock: lock,
        folder: Some((dir.to_path_buf(), foreign)),
    })
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_FILE);
    if !path.exists() {
        return Ok(None);
    }
    crate::error::read_json_as(&path).map(Some)
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest).expect("a manifest serialises");
    crate::jsonl::write_atomic(&dir.join(MANIFEST_FILE), text.as_bytes())
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
    match reuse {
        Reuse::Fresh if !held.is_empty() => {
            let _ = std::fs::remove_file(&lock_path);
            return Err(Error::checkpoint(
                file,
                "exists (another run's output); pass --resume to continue that run or --overwrite to replace it",
            ));
        }
        Reuse::Overwrite => held.iter().try_for_each(|p| remove(p))?,
        Reuse::Fresh | Reuse::Resume => {}
    }
    Ok(Claim {
        _lock: lock,
        folder: None,
    })
}

fn remove(path: &Path) -> Result<()> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(|e| Error::io(path, e))
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
        if name != LOCK_FILE && name != MANIFEST_FILE {
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
    fn overwrite_deletes_only_what_runs_wrote() {
        let dir = temp("owned");
        // A user's folder that no run ever claimed.
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        std::fs::write(dir.join("sub/data.csv"), "1,2").unwrap();
        for reuse in [Reuse::Overwrite, Reuse::Fresh] {
            let err = claim_dir(&dir, reuse).unwrap_err().to_string();
            assert!(
                err.contains("holds files that no run wrote (notes.txt, sub)"),
                "{err}"
            );
        }
        assert!(dir.join("notes.txt").exists() && dir.join("sub/data.csv").exists());
        assert!(!dir.join(LOCK_FILE).exists() && !dir.join(MANIFEST_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();

        // A finished run, then a file of the user's beside its outputs.
        let claim = claim_dir(&dir, Reuse::Fresh).unwrap();
        std::fs::create_dir_all(dir.join("checkpoint-1")).unwrap();
        std::fs::write(dir.join("metrics.jsonl"), "{}\n").unwrap();
        drop(claim);
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let err = claim_dir(&dir, Reuse::Overwrite).unwrap_err().to_string();
        assert!(err.contains("no run wrote (notes.txt)"), "{err}");
        assert!(dir.join("metrics.jsonl").exists());
        // Resuming keeps the user's file the user's.
        let claim = claim_dir(&dir, Reuse::Resume).unwrap();
        let while_running = std::fs::read(dir.join(MANIFEST_FILE)).unwrap();
        std::fs::write(dir.join("checkpoint-2"), "").unwrap();
        // Killed mid-run: the manifest stays as it was while the run held the folder.
        drop(claim);
        std::fs::write(dir.join(MANIFEST_FILE), while_running).unwrap();
        let err = claim_dir(&dir, Reuse::Overwrite).unwrap_err().to_string();
        assert!(err.contains("no run wrote (notes.txt)"), "{err}");
        std::fs::remove_file(dir.join("notes.txt")).unwrap();
        drop(claim_dir(&dir, Reuse::Overwrite).unwrap());
        assert_eq!(entries(&dir).unwrap(), Vec::<String>::new());
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
