//! Working-dir packages: a directory zipped for `PUT /api/packages/gcs/_ray_pkg_<hash>.zip`,
//! laid out as Ray's `create_package` lays it out (the directory's contents at the top).

use std::io::Write;
use std::path::Path;

/// Directories never packed (version control and build output).
const SKIP: [&str; 3] = [".git", "target", "__pycache__"];

/// Zips `dir`; returns the package name (`_ray_pkg_<content hash>.zip`) and the bytes.
pub fn zip_dir(dir: &Path, limit: usize) -> Result<(String, Vec<u8>), String> {
    if !dir.is_dir() {
        return Err(format!("working dir {} is not a directory", dir.display()));
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: &[u8]| {
        for x in b {
            hash = (hash ^ *x as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    let mut total = 0usize;
    for rel in &files {
        let path = dir.join(rel);
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        total += data.len();
        if total > limit {
            return Err(format!("working dir {} is over the {} MiB package limit", dir.display(), limit >> 20));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode()).unwrap_or(0o644);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode & 0o777);
        let name = rel.to_string_lossy().to_string();
        feed(name.as_bytes());
        feed(&data);
        w.start_file(name, opts).map_err(|e| e.to_string())?;
        w.write_all(&data).map_err(|e| e.to_string())?;
    }
    let bytes = w.finish().map_err(|e| e.to_string())?.into_inner();
    Ok((format!("_ray_pkg_{hash:016x}.zip"), bytes))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), String> {
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let e = e.map_err(|e| e.to_string())?;
        let p = e.path();
        let ft = e.file_type().map_err(|e| e.to_string())?;
        if ft.is_dir() {
            if SKIP.iter().any(|s| e.file_name() == *s) {
                continue;
            }
            walk(root, &p, out)?;
        } else if ft.is_file() {
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    Ok(())
}
