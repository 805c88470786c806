//! JSON Lines files, the format of every data set and result stream in the project: reading
//! with line numbers in every error, and appending records so that an interrupted job keeps
//! what it finished.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Every non-blank line of `path` parsed as a `T`, with its line number (from 1).
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Vec<(usize, T)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line)
            .map_err(|e| Error::data(path, i + 1, format!("malformed line: {e}")))?;
        out.push((i + 1, record));
    }
    Ok(out)
}

/// Appends one record as a line and flushes it, so that it survives an interruption.
pub fn append<T: Serialize>(file: &mut std::fs::File, path: &Path, record: &T) -> Result<()> {
    let mut line = serde_json::to_string(record).map_err(|e| Error::Json {
        path: path.into(),
        source: e,
    })?;
    line.push('\n');
    file.write_all(line.as_bytes())
        .and_then(|_| file.flush())
        .map_err(|e| Error::io(path, e))
}

/// Opens `path` for appending (creating it and its directory).
pub fn open_append(path: &Path) -> Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Opens `path` for appending like [`open_append`], first cutting off a last line without its
/// newline (what a killed writer leaves), so a resumed run rewrites that record whole.
pub fn open_resume(path: &Path) -> Result<std::fs::File> {
    let file = open_append(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        file.set_len(keep as u64).map_err(|e| Error::io(path, e))?;
    }
    Ok(file)
}

/// Writes `bytes` to `path` through a temporary file and a rename: readers see the old or the
/// new content, never a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Where the `image` field of line `line` of `data` points: relative to `images` when given,
/// else to the data file's directory. A missing file is an error naming the line.
pub fn resolve_image(
    data: &Path,
    line: usize,
    image: &str,
    images: Option<&Path>,
) -> Result<PathBuf> {
    if image.trim().is_empty() {
        return Err(Error::data(data, line, "field `image` is empty"));
    }
    let base = match images {
        Some(dir) => dir.to_path_buf(),
        None => data.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let path = base.join(image);
    if !path.is_file() {
        return Err(Error::data(
            data,
            line,
            format!("image `{image}` not found (looked for {})", path.display()),
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_in_errors_and_blank_lines_skipped() {
        let dir = std::env::temp_dir().join(format!("tita-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.jsonl");
        std::fs::write(&p, "{\"x\": 1}\n\n{\"x\": 2}\n{\"x\": oops}\n").unwrap();
        #[derive(serde::Deserialize)]
        struct R {
            #[allow(dead_code)]
            x: i32,
        }
        let err = read::<R>(&p).err().unwrap().to_string();
        assert!(err.contains("a.jsonl:4: malformed line"), "{err}");
        std::fs::write(&p, "{\"x\": 1}\n\n{\"x\": 2}\n").unwrap();
        let lines: Vec<usize> = read::<R>(&p).unwrap().into_iter().map(|(l, _)| l).collect();
        assert_eq!(lines, vec![1, 3]);
        let err = resolve_image(&p, 3, "nope.png", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.jsonl:3: image `nope.png` not found"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
