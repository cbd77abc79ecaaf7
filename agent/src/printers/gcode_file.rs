//! Lazy reading of a G-code file from disk, one raw line at a time, in bounded memory: a buffered
//! reader and one line buffer capped at `MAX_RAW_LINE` bytes, whatever the file's size. Owns
//! byte and line counting; must not interpret G-code (cleaning is the codec's job).

use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::fs::File;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Bytes of one line kept; the rest of a longer line is skipped (it can only be comment: a
/// command that long fails the codec's length check anyway).
pub const MAX_RAW_LINE: usize = 4096;
const READ_BUFFER: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("cannot open G-code file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("G-code file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("cannot read G-code file {path} after {offset} bytes: {source}")]
    Read {
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct GcodeReader {
    path: PathBuf,
    inner: BufReader<File>,
    line: Vec<u8>,
    bytes_total: u64,
    bytes_read: u64,
    lines_read: u64,
}

impl GcodeReader {
    /// Open the file and learn its size; nothing is read yet.
    pub async fn open(path: &Path) -> Result<GcodeReader, FileError> {
        let open_err = |source| FileError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).await.map_err(open_err)?;
        let meta = file.metadata().await.map_err(open_err)?;
        if !meta.is_file() {
            return Err(FileError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        Ok(GcodeReader {
            path: path.to_path_buf(),
            inner: BufReader::with_capacity(READ_BUFFER, file),
            line: Vec::with_capacity(256),
            bytes_total: meta.len(),
            bytes_read: 0,
            lines_read: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// File size when opened.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_total
    }
    /// Bytes consumed so far, line endings included.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }
    /// Lines returned so far (1-based number of the last one).
    pub fn lines_read(&self) -> u64 {
        self.lines_read
    }

    /// The next line without its `\n` (a `\r` is left for the codec), invalid UTF-8 replaced;
    /// `None` at end of file. A last line without a newline is still returned.
    pub async fn next_line(&mut self) -> Result<Option<String>, FileError> {
        self.line.clear();
        let mut any = false;
        loop {
            let buf = match self.inner.fill_buf().await {
                Ok(buf) => buf,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(FileError::Read {
                        path: self.path.clone(),
                        offset: self.bytes_read,
                        source,
                    })
                }
            };
            if buf.is_empty() {
                break;
            }
            any = true;
            let (take, end_of_line) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let room = MAX_RAW_LINE.saturating_sub(self.line.len());
            let keep = if end_of_line { take - 1 } else { take }.min(room);
            self.line
                .extend_from_slice(buf.get(..keep).unwrap_or_default());
            self.inner.consume(take);
            self.bytes_read += take as u64;
            if end_of_line {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        self.lines_read += 1;
        Ok(Some(String::from_utf8_lossy(&self.line).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(bytes: &[u8]) -> (Vec<String>, u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.gcode");
        std::fs::write(&path, bytes).expect("write");
        let mut r = GcodeReader::open(&path).await.expect("open");
        let mut out = Vec::new();
        while let Some(line) = r.next_line().await.expect("read") {
            out.push(line);
        }
        assert_eq!(r.bytes_read(), r.bytes_total());
        (out, r.lines_read())
    }

    #[tokio::test]
    async fn bom_crlf_and_missing_final_newline() {
        let (lines, n) = lines_of(b"\xef\xbb\xbfG28\r\nG1 X1 ; caf\xc3\xa9\r\n\r\nM104 S0").await;
        assert_eq!(lines, ["\u{feff}G28\r", "G1 X1 ; café\r", "\r", "M104 S0"]);
        assert_eq!(n, 4);
        assert_eq!(lines_of(b"").await.0, Vec::<String>::new());
        assert_eq!(lines_of(b"\n").await.0, [""]);
    }

    #[tokio::test]
    async fn long_lines_are_capped_and_invalid_utf8_replaced() {
        let mut bytes = b"G1 X1 ;".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 200_000));
        bytes.extend_from_slice(b"\nG1 \xff\n");
        let (lines, _) = lines_of(&bytes).await;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_RAW_LINE);
        assert_eq!(lines[1], "G1 \u{fffd}");
    }

    #[tokio::test]
    async fn missing_file_and_directory_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = GcodeReader::open(&dir.path().join("nope.gcode"))
            .await
            .err();
        assert!(matches!(err, Some(FileError::Open { .. })), "{err:?}");
        let err = GcodeReader::open(dir.path()).await.err();
        assert!(matches!(err, Some(FileError::NotAFile { .. })), "{err:?}");
    }
}
