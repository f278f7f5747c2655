//! A small real file system for tests of a full disk: a tmpfs mounted for one test (root only;
//! CI runs as root, and a CI run without the permission fails rather than skips).
#![allow(dead_code, clippy::unwrap_used)]

use std::{io::Write as _, path::PathBuf, process::Command};

/// A tmpfs of its own for one test, unmounted when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
    /// The mount point, removed (after the unmount in `drop`) when this field is dropped.
    _mount_point: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB; `None` where this process may not mount (not root), which
    /// fails the test in CI.
    pub fn mount(name: &str, mib: u32) -> Option<Self> {
        let mount_point = tempfile::Builder::new()
            .prefix(&format!("notify-disk-full-{name}-"))
            .tempdir()
            .unwrap();
        let dir = mount_point.path().to_owned();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to mount a tmpfs (run as root) for the full-disk tests"
            );
            eprintln!("skipped: cannot mount a tmpfs here (not root)");
            return None;
        }
        Some(Self {
            dir,
            _mount_point: mount_point,
        })
    }

    /// Fills the file system, then gives back `free` bytes; returns the filler file.
    pub fn fill_leaving(&self, free: u64) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xA5_u8; 64 * 1024];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
                Err(error) => panic!("filling the tmpfs: {error}"),
            }
        }
        // Whatever part of the last chunk did not fit: the file's length is what it holds.
        let _ = file.flush();
        let len = std::fs::metadata(&path).unwrap().len();
        file.set_len(len.saturating_sub(free)).unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// An untyped billing event (accepted without `--strict-schema`) of about `pad` bytes.
pub fn padded_event(id: &str, pad: usize) -> String {
    serde_json::json!({
        "eventId": id,
        "userId": "u-disk",
        "pad": "x".repeat(pad),
    })
    .to_string()
}
