//! `esb agent --stage-supervisor DIR`: for an agent that runs inside a
//! container (the box image's agent service). Every worker container gets
//! the agent's own executable and shared objects bind-mounted (see
//! `esb_runtimes_docker::entry`), and bind mounts name paths on the
//! engine's host, not in the agent's container. So the agent copies them
//! into `DIR`, a directory mounted at the same path in its container and
//! on the host, and mounts them from there.

use std::path::{Path, PathBuf};

use esb_runtimes_docker::SupervisorMount;

/// Copies `mount`'s files into `dir` (replacing older copies) and returns
/// the mount of the copies.
pub fn stage(mount: &SupervisorMount, dir: &Path) -> std::io::Result<SupervisorMount> {
    std::fs::create_dir_all(dir.join("lib"))?;
    let copy = |from: &Path, to: PathBuf| -> std::io::Result<PathBuf> {
        // Through a temporary name: a worker starting meanwhile never sees
        // a half-written file.
        let tmp = to.with_extension("part");
        std::fs::copy(from, &tmp)?;
        std::fs::rename(&tmp, &to)?;
        Ok(to)
    };
    let exe = copy(&mount.exe, dir.join("esb"))?;
    let mut libs = Vec::new();
    let mut loader = None;
    for lib in &mount.libs {
        let Some(name) = lib.file_name() else {
            continue;
        };
        let staged = copy(lib, dir.join("lib").join(name))?;
        if mount.loader.as_deref() == Some(lib.as_path()) {
            loader = Some(staged.clone());
        }
        libs.push(staged);
    }
    Ok(SupervisorMount { exe, loader, libs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_files_are_copies_under_dir() {
        let root = std::env::temp_dir().join(format!("esb-stage-{}", std::process::id()));
        let src = root.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("esb"), b"exe").unwrap();
        std::fs::write(src.join("ld-linux-x86-64.so.2"), b"ld").unwrap();
        std::fs::write(src.join("libc.so.6"), b"libc").unwrap();
        let mount = SupervisorMount {
            exe: src.join("esb"),
            loader: Some(src.join("ld-linux-x86-64.so.2")),
            libs: vec![src.join("ld-linux-x86-64.so.2"), src.join("libc.so.6")],
        };
        let dir = root.join("staged");
        let staged = stage(&mount, &dir).unwrap();
        assert_eq!(staged.exe, dir.join("esb"));
        assert_eq!(staged.loader, Some(dir.join("lib/ld-linux-x86-64.so.2")));
        assert_eq!(std::fs::read(dir.join("lib/libc.so.6")).unwrap(), b"libc");
        assert_eq!(staged.entrypoint(), mount.entrypoint());
        // Staging again replaces the copies.
        std::fs::write(src.join("esb"), b"exe2").unwrap();
        stage(&mount, &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("esb")).unwrap(), b"exe2");
        let _ = std::fs::remove_dir_all(&root);
    }
}
