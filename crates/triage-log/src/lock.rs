//! One server per log directory.
//!
//! Two servers on one directory (an overlapping rolling restart, a copy-pasted unit file) would
//! each take the other's live segment for a sealed one: compaction would archive and delete it
//! under its writer, and acknowledged feedback would be lost. The log therefore holds an
//! exclusive advisory lock on `LOCK` in the directory for as long as it is open; the file also
//! names the holder's pid, so that the refusal can say who it is. The operating system drops
//! the lock when the process ends, however it ends, so a crash leaves nothing to clean up.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::LogError;
use crate::segment::io_error;

/// The lock file's name in the log directory.
pub const LOCK_FILE: &str = "LOCK";

/// An exclusive hold on a log directory, released on drop.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock on `dir`, or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LogError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LogError::Locked {
                    dir: dir.display().to_string(),
                    holder: if holder.is_empty() {
                        "another process".into()
                    } else {
                        format!("process {holder}")
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_error(&path, e)),
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(|e| io_error(&path, e))?;
        Ok(Self { _file: file })
    }
}
