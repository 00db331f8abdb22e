//! The session directory (logs, spill files, the node socket) and the shared-memory directory.

use std::path::{Path, PathBuf};

#[derive(Debug)]
pub(crate) struct Session {
    pub dir: PathBuf,
    pub logs: PathBuf,
    pub spill: PathBuf,
    pub shm_dir: PathBuf,
    pub socket: PathBuf,
}

impl Session {
    pub(crate) fn create(temp_dir: Option<&Path>) -> Result<Session, crate::Error> {
        let base = temp_dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/tmp/flare"));
        let pid = std::process::id();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let stamp = format!("{}{}", crate::util::now_ms(), SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let dir = base.join(format!("session_{stamp}_{pid}"));
        let logs = dir.join("logs");
        let spill = dir.join("spill");
        let shm_root = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { dir.join("shm") };
        clean_stale(&shm_root);
        let shm_dir = shm_root.join(format!("flare_{pid}_{stamp}"));
        for d in [&logs, &spill, &shm_dir] {
            std::fs::create_dir_all(d).map_err(|e| crate::Error::io(format!("creating {}", d.display()), e))?;
        }
        let latest = base.join("session_latest");
        let _ = std::fs::remove_file(&latest);
        let _ = std::os::unix::fs::symlink(&dir, &latest);
        let socket = dir.join("node.sock");
        Ok(Session { dir, logs, spill, shm_dir, socket })
    }

    pub(crate) fn remove_shared_memory(&self) {
        let _ = std::fs::remove_dir_all(&self.shm_dir);
        let _ = std::fs::remove_dir_all(&self.spill);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Removes shared-memory directories of sessions whose driver is gone (killed before cleanup).
fn clean_stale(shm_root: &Path) {
    let Ok(entries) = std::fs::read_dir(shm_root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("flare_") else {
            continue;
        };
        let Some(pid) = rest.split('_').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // Safety: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Total RAM in bytes, from /proc/meminfo.
pub(crate) fn total_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Free bytes of the filesystem holding `path`.
pub(crate) fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // Safety: statvfs fills the struct we pass; the path is NUL terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}
