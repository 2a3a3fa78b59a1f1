//! ESB's offline runtime base images (`esb images build python3.11` →
//! `esb/python3.11:latest`), built with no registry: debootstrap a minimal
//! Debian (bookworm ships Python 3.11, trixie Python 3.13) into a
//! directory, add what AWS's Python runtimes ship (awslambdaric, and
//! boto3/botocore at the versions AWS lists for that runtime, see
//! [`SDK_VERSIONS`]) with the host's pip (`--target` into the root file
//! system: the build never needs network inside a container), add the
//! unprivileged worker user, and import the tree through the engine's
//! image-create API with the image's ENV/WORKDIR/LABEL changes. Runs inside
//! the agent (the only process that opens the engine socket); debootstrap
//! needs root.

use std::path::Path;
use std::process::Stdio;

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;

use crate::image_build::{ImageBuildError, ImageBuilder, tar_tree};

/// The image a runtime's base image is tagged as.
pub fn image_for_runtime(runtime: &str) -> Option<(&'static str, &'static str)> {
    base_for(runtime).map(|b| (b.repo, "latest"))
}

/// The runtimes `esb images build` knows.
pub const KNOWN: &str = "python3.11, python3.13";

/// One buildable base image.
#[derive(Debug, Clone, Copy)]
pub struct BaseImage {
    /// Lambda runtime identifier.
    pub runtime: &'static str,
    /// Image repository (tag `latest`).
    pub repo: &'static str,
    /// Debian suite that ships this Python.
    pub suite: &'static str,
    /// `3.11`: the `pip --python-version` and site-packages directory.
    pub python: &'static str,
    /// boto3 (= botocore) version pinned for this runtime.
    pub sdk: &'static str,
}

/// The boto3/botocore version each AWS Python runtime lists as
/// "runtime-included SDK" (AWS Lambda developer guide, "Building Lambda
/// functions with Python", table "Runtime-included SDK versions"); AWS
/// moves these forward now and then, update them here and in
/// docs/docker.md together. boto3 and botocore share the version number.
pub const SDK_VERSIONS: &[(&str, &str)] = &[
    ("python3.11", "1.40.4"),
    ("python3.12", "1.40.4"),
    ("python3.13", "1.40.4"),
];

fn sdk_for(runtime: &str) -> &'static str {
    SDK_VERSIONS
        .iter()
        .find(|(r, _)| *r == runtime)
        .map_or("1.40.4", |(_, v)| v)
}

/// The base image of `runtime`, if ESB can build one (Debian provides its
/// Python: bookworm 3.11, trixie 3.13; there is no Debian Python 3.12).
pub fn base_for(runtime: &str) -> Option<BaseImage> {
    let (runtime, repo, suite, python) = match runtime {
        "python3.11" => ("python3.11", "esb/python3.11", "bookworm", "3.11"),
        "python3.13" => ("python3.13", "esb/python3.13", "trixie", "3.13"),
        _ => return None,
    };
    Some(BaseImage {
        runtime,
        repo,
        suite,
        python,
        sdk: sdk_for(runtime),
    })
}

fn fail(message: impl Into<String>) -> ImageBuildError {
    ImageBuildError::BaseImage(message.into())
}

/// Runs `program`, passing each line it prints to `output` as it comes
/// (debootstrap's `I: Retrieving ...` lines are the build's progress).
async fn run(
    program: &str,
    args: &[&str],
    output: &mut (dyn FnMut(&str) + Send),
) -> Result<bool, ImageBuildError> {
    use tokio::io::AsyncBufReadExt;
    output(&format!("$ {program} {}", args.join(" ")));
    let mut child = tokio::process::Command::new(program)
        .args(args)
        // The agent's port token (a child agent gets it in its
        // environment) is none of debootstrap's or pip's business.
        .env_remove("ESB_AGENT_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .map(|s| tokio::io::BufReader::new(s).lines());
    let stderr = child
        .stderr
        .take()
        .map(|s| tokio::io::BufReader::new(s).lines());
    if let (Some(mut stdout), Some(mut stderr)) = (stdout, stderr) {
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                line = stdout.next_line(), if out_open => match line {
                    Ok(Some(line)) => output(&line),
                    _ => out_open = false,
                },
                line = stderr.next_line(), if err_open => match line {
                    Ok(Some(line)) => output(&line),
                    _ => err_open = false,
                },
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| fail(format!("{program}: {e}")))?;
    Ok(status.success())
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
    let base = base_for(runtime)
        .ok_or_else(|| fail(format!("unknown base image {runtime} (known: {KNOWN})")))?;
    let (repo, tag) = (base.repo, "latest");
    let image = format!("{repo}:{tag}");
    if !force {
        match builder.label(&image, "io.esb.boto3").await {
            Some(Some(sdk)) if sdk == base.sdk => {
                output(&format!("{image} already exists (--force to rebuild)"));
                return Ok(false);
            }
            Some(_) => output(&format!(
                "{image} predates the boto3 {} pin of {runtime}: rebuilding it",
                base.sdk
            )),
            None => {}
        }
    }
    let mirror =
        std::env::var("DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let suite = std::env::var("DEBIAN_SUITE").unwrap_or_else(|_| base.suite.into());
    let work = std::env::temp_dir().join(format!("esb-image-{}", uuid::Uuid::new_v4().simple()));
    let root = work.join("rootfs");
    let result = build_in(builder, &base, &root, &mirror, &suite, output).await;
    let _ = std::fs::remove_dir_all(&work);
    result?;
    output(&format!("built {image}"));
    Ok(true)
}

/// `pip install --target DIR` of wheels for the image's Python (never the
/// host's): the packages land in the root file system from the host, so
/// the build needs no network inside a container.
async fn pip_target(
    site: &str,
    python: &str,
    packages: &[&str],
    output: &mut (dyn FnMut(&str) + Send),
) -> bool {
    let mut args = vec![
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-warn-conflicts",
        "--root-user-action=ignore",
        "--no-compile",
        "--upgrade",
        "--target",
        site,
        "--python-version",
        python,
        "--only-binary=:all:",
        "--platform",
        "manylinux2014_x86_64",
        "--implementation",
        "cp",
    ];
    args.extend_from_slice(packages);
    run("pip", &args, output).await.unwrap_or(false)
}

async fn build_in(
    builder: &ImageBuilder,
    base: &BaseImage,
    root: &Path,
    mirror: &str,
    suite: &str,
    output: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageBuildError> {
    let (repo, tag) = (base.repo, "latest");
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
    // image's Python; optional, ESB falls back to its built-in bootstrap
    // when it is missing.
    let site = root.join(format!("usr/local/lib/python{}/dist-packages", base.python));
    std::fs::create_dir_all(&site).map_err(|e| fail(e.to_string()))?;
    let site_text = site.to_string_lossy().into_owned();
    output(&format!(
        "installing awslambdaric for Python {}",
        base.python
    ));
    let ric = pip_target(&site_text, base.python, &["awslambdaric"], output).await;
    if !ric {
        output("warning: awslambdaric did not install; the image uses ESB's built-in bootstrap");
    }
    // The AWS SDK the Lambda runtime ships: functions import boto3 without
    // packaging it. Required: an image without it would fail such apps.
    let boto3 = format!("boto3=={}", base.sdk);
    let botocore = format!("botocore=={}", base.sdk);
    output(&format!(
        "installing {boto3} {botocore} (as AWS's {} runtime)",
        base.runtime
    ));
    if !pip_target(&site_text, base.python, &[&boto3, &botocore], output).await {
        return Err(fail(format!(
            "pip could not install {boto3} and {botocore} into the image (the host needs pip and PyPI)"
        )));
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
        format!(
            "LABEL io.esb.runtime={} io.esb.awslambdaric={ric_label} io.esb.boto3={}",
            base.runtime, base.sdk
        ),
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
