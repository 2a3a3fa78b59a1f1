//! ESB's offline runtime base images (`esb images build python3.11` →
//! `esb/python3.11:latest`), built with no registry: debootstrap a minimal
//! Debian (bookworm ships Python 3.11) into a directory, add awslambdaric
//! with the host's pip when it installs, add the unprivileged worker user,
//! and import the tree through the engine's image-create API with the
//! image's ENV/WORKDIR/LABEL changes. Runs inside the agent (the only
//! process that opens the engine socket); debootstrap needs root.

use std::path::Path;
use std::process::Stdio;

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;

use crate::image_build::{ImageBuildError, ImageBuilder, tar_tree};

/// The image a runtime's base image is tagged as.
pub fn image_for_runtime(runtime: &str) -> Option<(&'static str, &'static str)> {
    match runtime {
        "python3.11" => Some(("esb/python3.11", "latest")),
        _ => None,
    }
}

fn fail(message: impl Into<String>) -> ImageBuildError {
    ImageBuildError::BaseImage(message.into())
}

async fn run(
    program: &str,
    args: &[&str],
    output: &mut (dyn FnMut(&str) + Send),
) -> Result<bool, ImageBuildError> {
    output(&format!("$ {program} {}", args.join(" ")));
    let result = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if !result.status.success() {
        let text = String::from_utf8_lossy(&result.stderr).into_owned()
            + &String::from_utf8_lossy(&result.stdout);
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(20)..] {
            output(line);
        }
    }
    Ok(result.status.success())
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    writeln!(file, "{line}")
}

/// Builds the base image of `runtime`; `Ok(false)` when it exists and not
/// `force`. Output lines go to `output`.
pub async fn build(
    builder: &ImageBuilder,
    runtime: &str,
    force: bool,
    output: &mut (dyn FnMut(&str) + Send),
) -> Result<bool, ImageBuildError> {
    let (repo, tag) = image_for_runtime(runtime)
        .ok_or_else(|| fail(format!("unknown base image {runtime} (known: python3.11)")))?;
    let image = format!("{repo}:{tag}");
    if !force && builder.exists(&image).await {
        output(&format!("{image} already exists (--force to rebuild)"));
        return Ok(false);
    }
    let mirror =
        std::env::var("DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let suite = std::env::var("DEBIAN_SUITE").unwrap_or_else(|_| "bookworm".into());
    let work = std::env::temp_dir().join(format!("esb-image-{}", uuid::Uuid::new_v4().simple()));
    let root = work.join("rootfs");
    let result = build_in(builder, &root, &mirror, &suite, repo, tag, output).await;
    let _ = std::fs::remove_dir_all(&work);
    result?;
    output(&format!("built {image}"));
    Ok(true)
}

async fn build_in(
    builder: &ImageBuilder,
    root: &Path,
    mirror: &str,
    suite: &str,
    repo: &str,
    tag: &str,
    output: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageBuildError> {
    std::fs::create_dir_all(root).map_err(|e| fail(format!("{}: {e}", root.display())))?;
    let root_text = root.to_string_lossy().into_owned();
    let ok = run(
        "debootstrap",
        &[
            "--variant=minbase",
            "--include=python3,ca-certificates",
            suite,
            &root_text,
            mirror,
        ],
        output,
    )
    .await?;
    if !ok {
        return Err(fail(
            "debootstrap failed (it needs root and the Debian mirror)",
        ));
    }
    // awslambdaric: the official Python runtime client, from wheels for the
    // image's Python (3.11); optional, ESB falls back to its built-in
    // bootstrap when it is missing.
    let site = root.join("usr/local/lib/python3.11/dist-packages");
    std::fs::create_dir_all(&site).map_err(|e| fail(e.to_string()))?;
    let site_text = site.to_string_lossy().into_owned();
    let ric = run(
        "pip",
        &[
            "install",
            "--quiet",
            "--no-compile",
            "--target",
            &site_text,
            "--python-version",
            "3.11",
            "--only-binary=:all:",
            "--platform",
            "manylinux2014_x86_64",
            "--implementation",
            "cp",
            "awslambdaric",
        ],
        output,
    )
    .await
    .unwrap_or(false);
    if !ric {
        output("warning: awslambdaric did not install; the image uses ESB's built-in bootstrap");
    }
    // The non-root user workers run as (uid/gid 993, like sbx_user1051).
    let setup = || -> std::io::Result<()> {
        append(
            &root.join("etc/passwd"),
            "sbx_user1051:x:993:990::/tmp:/usr/sbin/nologin",
        )?;
        append(&root.join("etc/group"), "sbx_user1051:x:990:")?;
        for dir in ["var/task", "var/runtime", "opt"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        // Trim what a runtime never needs.
        for dir in [
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
        ] {
            let path = root.join(dir);
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
                std::fs::create_dir_all(&path)?;
            }
        }
        Ok(())
    };
    setup().map_err(|e| fail(format!("preparing the root file system: {e}")))?;
    let ric_label = if ric { "yes" } else { "no" };
    let changes = vec![
        "ENV PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        "ENV LANG=C.UTF-8".to_string(),
        "ENV LAMBDA_TASK_ROOT=/var/task".to_string(),
        "WORKDIR /var/task".to_string(),
        format!("LABEL io.esb.runtime=python3.11 io.esb.awslambdaric={ric_label}"),
    ];
    import_tree(builder, root, repo, tag, changes, output).await
}

/// Imports a directory tree as the image `repo:tag` through the engine's
/// image-create API (`fromSrc=-`), applying Dockerfile-style `changes`
/// (`ENV`, `WORKDIR`, `LABEL`...).
pub async fn import_tree(
    builder: &ImageBuilder,
    root: &Path,
    repo: &str,
    tag: &str,
    changes: Vec<String>,
    output: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageBuildError> {
    let tree = root.to_path_buf();
    let tar = tokio::task::spawn_blocking(move || tar_tree(&tree))
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("cannot read the root file system: {e}")))?;
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .changes(changes)
        .build();
    let mut stream =
        builder
            .docker()
            .create_image(Some(options), Some(bollard::body_full(tar.into())), None);
    while let Some(item) = stream.next().await {
        let info = item?;
        if let Some(detail) = info.error_detail {
            return Err(fail(detail.message.unwrap_or_default()));
        }
        if let Some(status) = info.status {
            output(&status);
        }
    }
    Ok(())
}
