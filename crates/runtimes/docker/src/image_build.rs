//! Builds `PackageType: Image` functions from `Metadata.Dockerfile` /
//! `DockerContext` / `DockerTag` with the engine's build API. The context
//! directory is tarred in-process (no `docker` CLI, no tar crate: a small
//! ustar writer with GNU long names is all the engine needs).
//!
//! Who calls it: only the agent's `BuildImage` RPC, for `esb build` and the
//! on-demand build of `esb up --runtime docker` (both talk to an agent;
//! neither CLI process opens the engine socket).

use std::path::{Component, Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;

pub use esb_agent_client::ImageBuild;

/// An image build failure.
#[derive(Debug, thiserror::Error)]
pub enum ImageBuildError {
    /// The context directory could not be read.
    #[error("cannot read build context {path}: {source}")]
    Context {
        /// The path that failed.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The Dockerfile is not a file inside the context.
    #[error("dockerfile {dockerfile} is not a file inside the build context {context}")]
    Dockerfile {
        /// `Metadata.Dockerfile`.
        dockerfile: String,
        /// The context directory.
        context: PathBuf,
    },
    /// The engine refused or failed the build.
    #[error("building {tag} failed: {message}")]
    Build {
        /// The image tag.
        tag: String,
        /// The engine's message.
        message: String,
    },
    /// The engine could not be reached.
    #[error("docker engine: {0}")]
    Engine(#[from] bollard::errors::Error),
    /// A base image step (debootstrap, pip, import) failed.
    #[error("{0}")]
    BaseImage(String),
}

/// Builds images through one engine connection.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    docker: Docker,
}

impl ImageBuilder {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket).
    pub async fn connect() -> Result<Self, ImageBuildError> {
        let docker = Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        docker.ping().await?;
        Ok(Self { docker })
    }

    pub(crate) fn from_docker(docker: Docker) -> Self {
        Self { docker }
    }

    /// The bollard client (base image imports).
    pub(crate) fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Whether the engine has an image with this tag.
    pub async fn exists(&self, tag: &str) -> bool {
        self.docker.inspect_image(tag).await.is_ok()
    }

    /// `None` when the image does not exist, else the value of its label
    /// `key` (if set).
    pub async fn label(&self, tag: &str, key: &str) -> Option<Option<String>> {
        let image = self.docker.inspect_image(tag).await.ok()?;
        Some(
            image
                .config
                .and_then(|c| c.labels)
                .and_then(|mut labels| labels.remove(key)),
        )
    }

    /// Builds `job`, passing each line of build output to `output`.
    /// Returns the image id when the engine reports it.
    pub async fn build(
        &self,
        job: &ImageBuild,
        output: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Option<String>, ImageBuildError> {
        let context = job.context.clone();
        let dockerfile = job.dockerfile.clone();
        let tar = tokio::task::spawn_blocking(move || tar_context(&context, &dockerfile))
            .await
            .map_err(|e| ImageBuildError::Build {
                tag: job.tag.clone(),
                message: e.to_string(),
            })??;
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(&normalize(&job.dockerfile))
            .t(&job.tag)
            .rm(true)
            .forcerm(true)
            .build();
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(tar.into())));
        let mut image_id = None;
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| ImageBuildError::Build {
                tag: job.tag.clone(),
                message: e.to_string(),
            })?;
            if let Some(detail) = info.error_detail {
                return Err(ImageBuildError::Build {
                    tag: job.tag.clone(),
                    message: detail
                        .message
                        .unwrap_or_else(|| "unknown error".to_string()),
                });
            }
            if let Some(text) = info.stream {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    output(line);
                }
            }
            if let Some(status) = info.status {
                output(&status);
            }
            if let Some(id) = info.aux.and_then(|a| a.id) {
                image_id = Some(id);
            }
        }
        if !self.exists(&job.tag).await {
            return Err(ImageBuildError::Build {
                tag: job.tag.clone(),
                message: "the engine finished without producing the image".to_string(),
            });
        }
        Ok(image_id)
    }
}

/// `./Dockerfile` and `Dockerfile` name the same entry of the tar.
fn normalize(path: &str) -> String {
    let p: PathBuf = Path::new(path)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    p.to_string_lossy().replace('\\', "/")
}

/// The context directory as an uncompressed tar, after checking that the
/// Dockerfile is a file inside it.
pub fn tar_context(context: &Path, dockerfile: &str) -> Result<Vec<u8>, ImageBuildError> {
    let rel = Path::new(dockerfile);
    let escapes = rel
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::RootDir));
    if escapes || !context.join(rel).is_file() {
        return Err(ImageBuildError::Dockerfile {
            dockerfile: dockerfile.to_string(),
            context: context.to_path_buf(),
        });
    }
    let mut out = Vec::new();
    append_dir(&mut out, context, "").map_err(|source| ImageBuildError::Context {
        path: context.to_path_buf(),
        source,
    })?;
    // Two zero blocks end the archive.
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}

/// A whole directory tree (a root file system) as an uncompressed tar,
/// owned by root as in an image.
pub(crate) fn tar_tree(root: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    append_dir(&mut out, root, "")?;
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}

fn append_dir(out: &mut Vec<u8>, dir: &Path, prefix: &str) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{prefix}{name}");
        let meta = std::fs::symlink_metadata(entry.path())?;
        let mode = permissions(&meta);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            header(out, &path, b'2', mode, 0, &target.to_string_lossy());
        } else if meta.is_dir() {
            header(out, &format!("{path}/"), b'5', mode, 0, "");
            append_dir(out, &entry.path(), &format!("{path}/"))?;
        } else if meta.is_file() {
            let data = std::fs::read(entry.path())?;
            header(out, &path, b'0', mode, data.len() as u64, "");
            out.extend_from_slice(&data);
            pad(out);
        }
        // Sockets, fifos and devices have no place in an image.
    }
    Ok(())
}

#[cfg(unix)]
fn permissions(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn permissions(meta: &std::fs::Metadata) -> u32 {
    if meta.is_dir() { 0o755 } else { 0o644 }
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

fn octal(field: &mut [u8], value: u64) {
    // Digits, then a NUL terminator, right-aligned with leading zeros.
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    let bytes = text.as_bytes();
    let start = bytes.len().saturating_sub(digits);
    field[..digits].copy_from_slice(&bytes[start..]);
    field[digits] = 0;
}

fn header(out: &mut Vec<u8>, name: &str, kind: u8, mode: u32, size: u64, link: &str) {
    // GNU long name / long link entries for paths over 100 bytes (the Go
    // archive/tar reader the engine uses understands them).
    if name.len() > 100 {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        raw_header(out, "././@LongLink", b'L', 0o644, data.len() as u64, "");
        out.extend_from_slice(&data);
        pad(out);
    }
    if link.len() > 100 {
        let mut data = link.as_bytes().to_vec();
        data.push(0);
        raw_header(out, "././@LongLink", b'K', 0o644, data.len() as u64, "");
        out.extend_from_slice(&data);
        pad(out);
    }
    raw_header(out, name, kind, mode, size, link);
}

fn raw_header(out: &mut Vec<u8>, name: &str, kind: u8, mode: u32, size: u64, link: &str) {
    let mut h = [0u8; 512];
    let n = name.as_bytes();
    h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    let l = link.as_bytes();
    h[157..157 + l.len().min(100)].copy_from_slice(&l[..l.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar ");
    h[263..265].copy_from_slice(b" \0");
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    out.extend_from_slice(&h);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back (name, kind, data) triples, resolving GNU long names.
    fn entries(tar: &[u8]) -> Vec<(String, u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut long = None;
        while at + 512 <= tar.len() {
            let h = &tar[at..at + 512];
            if h.iter().all(|b| *b == 0) {
                break;
            }
            let stored: u64 = {
                let f = String::from_utf8_lossy(&h[148..154]).to_string();
                u64::from_str_radix(f.trim(), 8).unwrap()
            };
            let mut copy = h.to_vec();
            copy[148..156].copy_from_slice(b"        ");
            assert_eq!(stored, copy.iter().map(|b| u64::from(*b)).sum::<u64>());
            let name_end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
            let name = String::from_utf8_lossy(&h[..name_end]).to_string();
            let size_text = String::from_utf8_lossy(&h[124..135]).to_string();
            let size = usize::from_str_radix(size_text.trim_end_matches('\0'), 8).unwrap();
            let data = tar[at + 512..at + 512 + size].to_vec();
            at += 512 + size.div_ceil(512) * 512;
            if h[156] == b'L' {
                long = Some(String::from_utf8_lossy(&data[..data.len() - 1]).to_string());
                continue;
            }
            out.push((long.take().unwrap_or(name), h[156], data));
        }
        out
    }

    #[test]
    fn tars_the_context_with_long_names_and_contents() {
        let dir = std::env::temp_dir().join(format!("esb-tar-{}", uuid::Uuid::new_v4()));
        let deep = dir.join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(deep.join("app.py"), "x = 1\n").unwrap();
        let tar = tar_context(&dir, "./Dockerfile").unwrap();
        assert_eq!(tar.len() % 512, 0);
        let found = entries(&tar);
        let names: Vec<&str> = found.iter().map(|e| e.0.as_str()).collect();
        let long = format!("{}/{}/app.py", "a".repeat(60), "b".repeat(60));
        assert!(names.contains(&"Dockerfile"), "{names:?}");
        assert!(names.contains(&long.as_str()), "{names:?}");
        let app = found.iter().find(|e| e.0 == long).unwrap();
        assert_eq!(app.1, b'0');
        assert_eq!(app.2, b"x = 1\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_a_dockerfile_outside_the_context() {
        let dir = std::env::temp_dir().join(format!("esb-tar-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = tar_context(&dir, "../Dockerfile").unwrap_err();
        assert!(matches!(err, ImageBuildError::Dockerfile { .. }), "{err}");
        let err = tar_context(&dir, "Dockerfile").unwrap_err();
        assert!(err.to_string().contains("not a file inside"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
