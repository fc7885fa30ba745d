//! Files replaced whole, the way the credentials file and the job files are saved.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Whether the writer holds the lock that every writer of the file takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// The lock is held, so no other writer is using the file's temporary file.
    Locked,
    /// No lock is held, because the directory cannot hold lock files.
    Unlocked,
}

/// Replaces `path` with `bytes` atomically. The bytes go to a new temporary file in the same
/// directory (mode 0600, as tempfile makes its files), which is synced and renamed over `path`, and then the directory is
/// synced. After a crash, `path` holds either the old bytes or the new ones, whole. The
/// directory is created (mode 0700) if it is missing.
///
/// A [`Writer::Locked`] write uses one fixed temporary file, [`temp_path`]. A writer killed
/// mid-write (kill -9, a power cut) may leave that file behind. The next write removes it
/// before it creates its own, and [`remove_temp`] removes it too, so it does not stay in the
/// directory for good. A [`Writer::Unlocked`] write has no lock that would
/// make a fixed name safe, so it uses a random name. When such a write fails, nothing is left
/// behind; a killed unlocked writer does leave its temporary file.
pub(crate) fn replace(path: &Path, bytes: &[u8], writer: Writer) -> std::io::Result<()> {
    let dir = parent_dir(path);
    create_private_dir(dir)?;
    let (mut file, temp) = match writer {
        Writer::Locked => {
            // A fresh file, never the leftover opened again: whatever is at that name (a torn
            // file, a symbolic link) goes first, and the new one is created exclusively.
            remove_temp(path)?;
            let temp = temp_path(path);
            let file = private_options().open(&temp)?;
            // From here on, the temporary file is removed if anything fails.
            (file, tempfile::TempPath::try_from_path(&temp)?)
        }
        Writer::Unlocked => tempfile::Builder::new()
            .prefix(&format!(".{}.", file_name(path)))
            .suffix(".tmp")
            .tempfile_in(dir)?
            .into_parts(),
    };
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    temp.persist(path).map_err(|err| err.error)?;
    sync_dir(dir)
}

/// The temporary file that a [`Writer::Locked`] write of `path` uses: `.<file name>.tmp`,
/// beside `path`.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    parent_dir(path).join(format!(".{}.tmp", file_name(path)))
}

/// Removes what a killed [`Writer::Locked`] writer of `path` left behind. A missing file is
/// fine. Call it only while holding the lock, so that no writer is using the file.
pub(crate) fn remove_temp(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(temp_path(path)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn private_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Creates `dir` and any missing parents. On Unix they are private (mode 0700).
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_locked_write_replaces_what_a_killed_writer_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.json");
        replace(&path, b"{\"old\":1}", Writer::Locked).unwrap();
        // A writer killed between its write and its rename: a torn temporary file.
        std::fs::write(temp_path(&path), b"{\"torn").unwrap();
        assert_eq!(names(dir.path()), [".job.json.tmp", "job.json"]);

        replace(&path, b"{\"new\":2}", Writer::Locked).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"new\":2}");
        assert_eq!(names(dir.path()), ["job.json"]);
    }

    #[test]
    fn remove_temp_removes_the_leftover_and_takes_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        remove_temp(&path).unwrap();
        std::fs::write(temp_path(&path), b"torn").unwrap();
        remove_temp(&path).unwrap();
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: the rename fails.
        let path = dir.path().join("job.json");
        std::fs::create_dir_all(path.join("inner")).unwrap();
        for writer in [Writer::Locked, Writer::Unlocked] {
            assert!(replace(&path, b"{}", writer).is_err(), "{writer:?}");
            assert_eq!(names(dir.path()), ["job.json"], "{writer:?}");
        }
    }

    #[test]
    fn an_unlocked_write_leaves_only_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("job.json");
        replace(&path, b"{}", Writer::Unlocked).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        assert_eq!(names(&dir.path().join("nested")), ["job.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new").join("credentials.json");
        // A leftover with looser permissions is not reused: the new file is private.
        std::fs::create_dir(dir.path().join("new")).unwrap();
        std::fs::write(temp_path(&path), b"torn").unwrap();
        std::fs::set_permissions(temp_path(&path), std::fs::Permissions::from_mode(0o644)).unwrap();
        replace(&path, b"{}", Writer::Locked).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn a_link_at_the_temporary_name_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.txt");
        std::fs::write(&elsewhere, b"keep me").unwrap();
        let path = dir.path().join("credentials.json");
        std::os::unix::fs::symlink(&elsewhere, temp_path(&path)).unwrap();
        replace(&path, b"{}", Writer::Locked).unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"keep me");
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        assert_eq!(names(dir.path()), ["credentials.json", "elsewhere.txt"]);
    }

    #[cfg(unix)]
    #[test]
    fn new_folders_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();

        let fresh = dir.path().join("fresh").join("x.json");
        replace(&fresh, b"{}", Writer::Unlocked).unwrap();
        let mode = std::fs::metadata(fresh.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }
}
