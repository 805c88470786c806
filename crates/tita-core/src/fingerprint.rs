//! Fingerprints of a run's inputs (a model folder, a data file), kept in its checkpoints so that
//! a resume with other inputs is refused instead of finishing a model no single run would give.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Bytes read from each end of a weights file: with the size and the safetensors header (names,
/// dtypes, shapes, offsets) this tells checkpoints apart without reading gigabytes.
const WEIGHT_SAMPLE: u64 = 1 << 20;

/// sha256 of a file's bytes, as hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(hex(hasher.finalize().as_slice()))
}

/// A model folder's fingerprint: sha256 over `config.json` and, for each `*.safetensors` file
/// (by name), its size, its header and the first and last MiB of its data. Where the folder lives
/// and when it was copied do not enter it.
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let config = dir.join("config.json");
    hasher.update(std::fs::read(&config).map_err(|e| Error::io(&config, e))?);
    let mut weights: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    weights.sort();
    for path in weights {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        hasher.update(name.as_bytes());
        let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        hasher.update(size.to_le_bytes());
        // Header and first MiB, then the last MiB (overlapping reads on small files are fine).
        let mut head = Vec::new();
        (&mut file)
            .take(WEIGHT_SAMPLE)
            .read_to_end(&mut head)
            .map_err(|e| Error::io(&path, e))?;
        hasher.update(&head);
        let tail_at = size.saturating_sub(WEIGHT_SAMPLE);
        file.seek(SeekFrom::Start(tail_at))
            .map_err(|e| Error::io(&path, e))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)
            .map_err(|e| Error::io(&path, e))?;
        hasher.update(&tail);
    }
    Ok(hex(hasher.finalize().as_slice()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_follow_contents_not_places() {
        let root = std::env::temp_dir().join(format!("tita-fingerprint-{}", std::process::id()));
        let (a, b) = (root.join("a"), root.join("b"));
        for dir in [&a, &b] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("config.json"), "{}").unwrap();
            std::fs::write(dir.join("model.safetensors"), vec![7u8; 3 << 20]).unwrap();
        }
        assert_eq!(
            model_fingerprint(&a).unwrap(),
            model_fingerprint(&b).unwrap()
        );
        // One byte in the middle of the data is past the sampled ends: a byte at either end is not.
        let mut bytes = vec![7u8; 3 << 20];
        *bytes.last_mut().unwrap() = 8;
        std::fs::write(b.join("model.safetensors"), &bytes).unwrap();
        assert_ne!(
            model_fingerprint(&a).unwrap(),
            model_fingerprint(&b).unwrap()
        );
        std::fs::write(b.join("model.safetensors"), vec![7u8; 3 << 20]).unwrap();
        std::fs::write(b.join("config.json"), "{\"x\": 1}").unwrap();
        assert_ne!(
            model_fingerprint(&a).unwrap(),
            model_fingerprint(&b).unwrap()
        );
        assert_eq!(
            file_sha256(&a.join("config.json")).unwrap(),
            // sha256("{}")
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        let err = model_fingerprint(&root.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing/config.json"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
