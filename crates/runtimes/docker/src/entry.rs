//! How the in-container supervisor gets into a container: the agent's own
//! `esb` executable, bind-mounted read-only at `/esb/esb` and started as
//! `esb container-supervisor`. One binary, no second build step.
//!
//! A dynamically linked `esb` would depend on the image's C library (an
//! AWS base image has another glibc than the host; a `FROM scratch` image
//! has none). So the agent also mounts the exact shared objects it runs
//! with, found in `/proc/self/maps` (the dynamic loader, libc, libm,
//! libgcc_s...), at `/esb/lib/`, and the entrypoint runs the host's loader
//! on the executable with `--library-path /esb/lib --inhibit-cache`: the
//! image's own libraries and `ld.so.cache` are never consulted, and nothing
//! leaks into the function's environment (no `LD_LIBRARY_PATH`). A
//! statically linked `esb` (no loader mapped) is run directly.
//!
//! Reading `/proc/self/maps` rather than running `ldd`: it needs no tool on
//! the agent's host (a minimal box image has none) and lists exactly what
//! the running process loaded.

use std::path::{Path, PathBuf};

/// Where the executable is mounted in each container.
pub const EXE_PATH: &str = "/esb/esb";
/// Where the executable's shared objects are mounted.
pub const LIB_DIR: &str = "/esb/lib";
/// The argument that makes `esb` run as the container supervisor.
pub const SUPERVISOR_ARG: &str = "container-supervisor";

/// The host files that run the supervisor in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorMount {
    /// Host path of the executable (`esb`, or a static supervisor).
    pub exe: PathBuf,
    /// Host path of its dynamic loader; `None` for a static executable.
    pub loader: Option<PathBuf>,
    /// Host paths of the shared objects it needs (the loader included).
    pub libs: Vec<PathBuf>,
}

/// Why the running executable cannot be mounted.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// `/proc/self/exe` or `/proc/self/maps` could not be read.
    #[error("cannot find the running executable: {0}")]
    Io(#[from] std::io::Error),
    /// The executable was replaced or deleted since it started.
    #[error(
        "the running executable {0} was deleted or replaced since it started; restart the agent"
    )]
    Deleted(PathBuf),
}

impl SupervisorMount {
    /// A static executable mounted alone (`--supervisor FILE`).
    pub fn static_executable(exe: impl Into<PathBuf>) -> Self {
        Self {
            exe: exe.into(),
            loader: None,
            libs: Vec::new(),
        }
    }

    /// The running executable and the shared objects it has mapped.
    pub fn this_executable() -> Result<Self, EntryError> {
        let exe = std::fs::read_link("/proc/self/exe")?;
        if exe.to_string_lossy().ends_with(" (deleted)") {
            return Err(EntryError::Deleted(exe));
        }
        let maps = std::fs::read_to_string("/proc/self/maps")?;
        Ok(Self::from_maps(exe, &maps))
    }

    /// Builds the mount from the text of `/proc/self/maps`.
    pub fn from_maps(exe: PathBuf, maps: &str) -> Self {
        let mut libs: Vec<PathBuf> = Vec::new();
        for line in maps.lines() {
            // address perms offset dev inode path (the path may hold spaces)
            let Some(path) = line.splitn(6, ' ').nth(5).map(str::trim) else {
                continue;
            };
            if !path.starts_with('/') || path.ends_with(" (deleted)") {
                continue;
            }
            let path = PathBuf::from(path);
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if path == exe || !name.contains(".so") || libs.contains(&path) {
                continue;
            }
            libs.push(path);
        }
        let loader = libs.iter().find(|p| is_loader(p)).cloned();
        if loader.is_none() {
            libs.clear();
        }
        Self { exe, loader, libs }
    }

    /// The bind mounts (`host:container:ro`).
    pub fn binds(&self) -> Vec<String> {
        let mut binds = vec![format!("{}:{EXE_PATH}:ro", self.exe.display())];
        for lib in &self.libs {
            if let Some(name) = lib.file_name() {
                binds.push(format!(
                    "{}:{LIB_DIR}/{}:ro",
                    lib.display(),
                    Path::new(name).display()
                ));
            }
        }
        binds
    }

    /// The container's entrypoint.
    pub fn entrypoint(&self) -> Vec<String> {
        let mut entry = Vec::new();
        if let Some(name) = self.loader.as_ref().and_then(|l| l.file_name()) {
            entry.push(format!("{LIB_DIR}/{}", Path::new(name).display()));
            if name.to_string_lossy().starts_with("ld-linux") {
                entry.push("--inhibit-cache".to_string());
            }
            entry.push("--library-path".to_string());
            entry.push(LIB_DIR.to_string());
        }
        entry.push(EXE_PATH.to_string());
        entry.push(SUPERVISOR_ARG.to_string());
        entry
    }
}

fn is_loader(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        n.starts_with("ld-linux") || n.starts_with("ld64.so") || n.starts_with("ld-musl")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c1000000 r--p 00000000 08:01 100 /work/target/debug/esb
7f0000000000-7f0000001000 r--p 00000000 08:01 200 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1
7f0000001000-7f0000002000 r-xp 00001000 08:01 200 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1
7f0000002000-7f0000003000 r--p 00000000 08:01 300 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000003000-7f0000004000 rw-p 00000000 00:00 0 
7f0000004000-7f0000005000 r--p 00000000 08:01 400 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7f0000005000-7f0000006000 r--p 00000000 08:01 500 /etc/locale.alias
7ffd00000000-7ffd00001000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn dynamic_executable_runs_under_the_hosts_loader() {
        let mount = SupervisorMount::from_maps(PathBuf::from("/work/target/debug/esb"), MAPS);
        assert_eq!(
            mount.loader.as_deref(),
            Some(Path::new("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"))
        );
        assert_eq!(mount.libs.len(), 3, "{:?}", mount.libs);
        assert_eq!(
            mount.binds(),
            vec![
                "/work/target/debug/esb:/esb/esb:ro",
                "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1:/esb/lib/libgcc_s.so.1:ro",
                "/usr/lib/x86_64-linux-gnu/libc.so.6:/esb/lib/libc.so.6:ro",
                "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2:/esb/lib/ld-linux-x86-64.so.2:ro",
            ]
        );
        assert_eq!(
            mount.entrypoint(),
            vec![
                "/esb/lib/ld-linux-x86-64.so.2",
                "--inhibit-cache",
                "--library-path",
                "/esb/lib",
                "/esb/esb",
                "container-supervisor"
            ]
        );
    }

    #[test]
    fn static_executable_runs_directly() {
        let maps = "55d0c0000000-55d0c1000000 r-xp 00000000 08:01 100 /opt/esb\n";
        let mount = SupervisorMount::from_maps(PathBuf::from("/opt/esb"), maps);
        assert_eq!(mount, SupervisorMount::static_executable("/opt/esb"));
        assert_eq!(mount.entrypoint(), vec!["/esb/esb", "container-supervisor"]);
        assert_eq!(mount.binds(), vec!["/opt/esb:/esb/esb:ro"]);
    }

    #[test]
    fn this_process_is_found() {
        let mount = SupervisorMount::this_executable().expect("own executable");
        assert!(mount.exe.is_file());
        for lib in &mount.libs {
            assert!(lib.is_file(), "{}", lib.display());
        }
    }
}
