//! Reading the files an operator points Remora at (the control file, the identity files)
//! with bounds, so a wrong path cannot hurt the process: it must be a regular file (a FIFO
//! or a device such as `/dev/zero` is refused before it is opened) of at most a given size.

use std::{io::Read, path::Path};

/// The largest control file read: far more than any hand-written config.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// The largest identity file read (a trust bundle of every public CA is under 300 KiB).
pub const MAX_IDENTITY_BYTES: u64 = 1024 * 1024;

/// The contents of `path`, a regular file of at most `max` bytes; the error says what is
/// wrong in words fit for a config error.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("cannot read: not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!(
            "cannot read: {} bytes is more than the {max} allowed",
            meta.len()
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut out = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read: {e}"))?;
    if out.len() as u64 > max {
        return Err(format!("cannot read: grew past the {max} bytes allowed"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("remora-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small");
        std::fs::write(&small, b"hello").unwrap();
        assert_eq!(read_bounded(&small, 10).unwrap(), b"hello");
        assert!(read_bounded(&small, 4)
            .unwrap_err()
            .contains("more than the 4 allowed"));
        assert!(read_bounded(Path::new("/dev/zero"), 10)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(read_bounded(&dir, 10)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(read_bounded(&dir.join("missing"), 10)
            .unwrap_err()
            .contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
