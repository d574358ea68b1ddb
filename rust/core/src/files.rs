//! The one guarded way in and out of the file system for every native reader and writer.
//!
//! Writing: a file appears at its destination only complete. Data goes to a hidden
//! temporary `.<name>.tmp-<pid>` beside the destination, which is synced and renamed over
//! the destination at `commit`; dropped uncommitted, the temporary is removed. A
//! destination that exists and is not a regular file (a directory, a device, a socket) is
//! refused, never replaced. Temporaries left by processes that no longer exist (killed with
//! SIGKILL, or a machine that lost power) are removed the next time the same destination is
//! written.
//!
//! Reading whole files: only regular files, and only up to a stated size, so that a device
//! such as /dev/zero or a huge file given by mistake is refused before any memory is used.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// `.<name>.tmp-<pid>` beside `dest`.
pub fn temporary_name(dest: &Path, pid: u32) -> Result<PathBuf> {
    let name = dest
        .file_name()
        .ok_or_else(|| Error::file(dest, "not a file path"))?
        .to_string_lossy()
        .to_string();
    Ok(dest.with_file_name(format!(".{name}.tmp-{pid}")))
}

/// Refuses a destination that exists and is not a regular file (or a link to one).
pub fn check_destination(dest: &Path) -> Result<()> {
    match std::fs::metadata(dest) {
        Ok(m) if m.is_dir() => Err(Error::file(dest, "is a directory; give a file name")),
        Ok(m) if !m.is_file() => Err(Error::file(dest, "exists and is not a regular file")),
        _ => Ok(()),
    }
}

/// Whether process `pid` is known to be gone. Only Linux's /proc can say; elsewhere every
/// process counts as alive and nothing is removed.
fn process_is_gone(pid: u32) -> bool {
    Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the temporaries of `dest` left by processes that no longer exist; returns them.
pub fn remove_stale_temporaries(dest: &Path) -> Vec<PathBuf> {
    let Some(name) = dest.file_name().map(|s| s.to_string_lossy().to_string()) else {
        return Vec::new();
    };
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!(".{name}.tmp-");
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = file_name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let regular = e.file_type().map(|t| t.is_file()).unwrap_or(false);
        if regular
            && pid != std::process::id()
            && process_is_gone(pid)
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed.push(e.path());
        }
    }
    removed
}

/// A file being written: complete at `dest` after `commit`, absent on any failure.
pub struct AtomicFile {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<AtomicFile> {
        check_destination(dest)?;
        remove_stale_temporaries(dest);
        let tmp = temporary_name(dest, std::process::id())?;
        let f = File::create(&tmp)
            .map_err(|e| Error::file(dest, format!("cannot create output: {e}")))?;
        Ok(AtomicFile {
            out: Some(BufWriter::with_capacity(1 << 20, f)),
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    pub fn write_all(&mut self, b: &[u8]) -> Result<()> {
        let dest = &self.dest;
        self.out
            .as_mut()
            .ok_or_else(|| Error::file(dest, "writer already finished"))?
            .write_all(b)
            .map_err(|e| Error::file(dest, format!("write failed: {e}")))
    }

    /// Flushes, syncs and renames the temporary file over the destination.
    pub fn commit(mut self) -> Result<()> {
        let out = self.out.take().expect("uncommitted file is open");
        let done = out
            .into_inner()
            .map_err(|e| Error::file(&self.dest, format!("write failed: {}", e.error())))
            .and_then(|f| {
                f.sync_all()
                    .map_err(|e| Error::file(&self.dest, format!("write failed: {e}")))
            })
            .and_then(|_| check_destination(&self.dest))
            .and_then(|_| {
                std::fs::rename(&self.tmp, &self.dest).map_err(|e| {
                    Error::file(
                        &self.dest,
                        format!("cannot move the finished file into place: {e}"),
                    )
                })
            });
        if done.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        done
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `data` to `dest` through an [`AtomicFile`].
pub fn write_file(dest: &Path, data: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.write_all(data)?;
    f.commit()
}

/// Opens a regular file for reading, with a message naming the path for everything else.
pub fn open_regular(path: &Path, what: &str) -> Result<(File, u64)> {
    let m = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::file(path, format!("no such {what}")),
        _ => Error::file(path, format!("cannot read: {e}")),
    })?;
    if m.is_dir() {
        return Err(Error::file(path, format!("is a directory, not a {what}")));
    }
    if !m.is_file() {
        return Err(Error::file(
            path,
            format!("not a regular file (a device, pipe or socket), not a {what}"),
        ));
    }
    let f = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    Ok((f, m.len()))
}

/// The whole of a regular file of at most `max_bytes`.
pub fn read_capped(path: &Path, what: &str, max_bytes: u64) -> Result<Vec<u8>> {
    let (f, len) = open_regular(path, what)?;
    if len > max_bytes {
        return Err(Error::file(
            path,
            format!("{len} bytes, more than the {max_bytes} a {what} may have"),
        ));
    }
    let mut b = Vec::with_capacity(len as usize);
    // `take` guards against a file that grows while it is read
    f.take(max_bytes + 1)
        .read_to_end(&mut b)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    if b.len() as u64 > max_bytes {
        return Err(Error::file(
            path,
            format!("grew past the {max_bytes} bytes a {what} may have while being read"),
        ));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("simpo-q-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn commit_replaces_and_drop_leaves_nothing() {
        let d = dir("commit");
        let dest = d.join("a.bin");
        std::fs::write(&dest, b"old").unwrap();
        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            b"old",
            "visible only at commit"
        );
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        let mut g = AtomicFile::create(&dest).unwrap();
        g.write_all(b"partial").unwrap();
        drop(g);
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    }

    #[test]
    fn refuses_non_regular_destinations() {
        let d = dir("refuse");
        let e = AtomicFile::create(&d).err().unwrap().to_string();
        assert!(e.contains("is a directory"), "{e}");
        if Path::new("/dev/null").exists() {
            let e = write_file(Path::new("/dev/null"), b"x")
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let d = dir("stale");
        let dest = d.join("m.gguf");
        // pid_max is at most 2^22 on Linux: this pid cannot exist
        let dead = temporary_name(&dest, 4_194_304 + 7).unwrap();
        let alive = temporary_name(&dest, 1).unwrap(); // init always runs
        let other = d.join(".other.gguf.tmp-4194311");
        for p in [&dead, &alive, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        write_file(&dest, b"y").unwrap();
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
    }

    #[test]
    fn read_capped_refuses_devices_directories_and_large_files() {
        let d = dir("read");
        let p = d.join("f");
        std::fs::write(&p, vec![1u8; 100]).unwrap();
        assert_eq!(read_capped(&p, "test file", 100).unwrap().len(), 100);
        let e = read_capped(&p, "test file", 99).unwrap_err().to_string();
        assert!(e.contains("more than the 99"), "{e}");
        let e = read_capped(&d, "test file", 99).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        if Path::new("/dev/zero").exists() {
            let e = read_capped(Path::new("/dev/zero"), "test file", 99)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let e = read_capped(&d.join("missing"), "test file", 9)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such test file"), "{e}");
    }
}
