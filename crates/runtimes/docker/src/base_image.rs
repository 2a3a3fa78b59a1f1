//! ESB's offline runtime base images (`esb images build python3.11` →
//! `esb/python3.11:latest`; `nodejs18.x`, `nodejs20.x`, `provided`), built
//! with no registry: debootstrap a minimal Debian (bookworm ships Python
//! 3.11 and Node.js 18, trixie Python 3.13 and Node.js 20) into a
//! directory; for Python add what AWS's Python runtimes ship (awslambdaric,
//! and boto3/botocore, see [`SDK_VERSIONS`]) with the host's pip
//! (`--target` into the root file system: the build never needs network
//! inside a container); `provided` is the bare minimal root; add the
//! unprivileged worker user, and import the tree through the engine's
//! image-create API with the image's ENV/WORKDIR/LABEL changes. Runs inside
//! the agent (the only process that opens the engine socket); debootstrap
//! needs root.

use std::path::Path;
use std::process::Stdio;

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;

use crate::image_build::{ImageBuildError, ImageBuilder, tar_tree};

/// The image a base image name (`esb images build NAME`) is tagged as.
pub fn image_for_runtime(runtime: &str) -> Option<(&'static str, &'static str)> {
    base_for(runtime).map(|b| (b.repo, "latest"))
}

/// The base images `esb images build` knows.
pub const KNOWN: &str = "python3.11, python3.13, nodejs18.x, nodejs20.x, provided";

/// What a base image carries besides the minimal Debian root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Debian's Python, awslambdaric and boto3/botocore.
    Python {
        /// `3.11`: the `pip --python-version` and site-packages directory.
        version: &'static str,
        /// boto3 (= botocore) version pinned for this runtime.
        sdk: &'static str,
    },
    /// Debian's Node.js of that major version (ESB's built-in bootstrap
    /// is mounted at run time).
    Node {
        /// Major version (`20`).
        major: u32,
    },
    /// Nothing else: a `provided` function brings its own `bootstrap`
    /// (glibc, a shell and CA certificates are there, as on AWS's
    /// `provided.al2023`).
    Provided,
}

/// One buildable base image.
#[derive(Debug, Clone, Copy)]
pub struct BaseImage {
    /// Name for `esb images build` (a Lambda runtime identifier).
    pub runtime: &'static str,
    /// Image repository (tag `latest`).
    pub repo: &'static str,
    /// Debian suite that ships this runtime's language.
    pub suite: &'static str,
    /// The language layer.
    pub language: Language,
}

impl BaseImage {
    /// The value of the `io.esb.image` label that marks the image as
    /// current: an image without it (or with another) is rebuilt once.
    pub fn version_label(&self) -> String {
        match self.language {
            Language::Python { sdk, .. } => format!("{}-boto3-{sdk}", self.runtime),
            Language::Node { .. } | Language::Provided => format!("{}-1", self.runtime),
        }
    }
}

/// The boto3/botocore version ESB's Python images carry. AWS publishes no
/// fixed list: its guide ("Building Lambda functions with Python",
/// "Runtime-included SDK versions") says the included version "depends on
/// the runtime version and your AWS Region" and to print
/// `boto3.__version__` in a function to find it; AWS moves it forward with
/// runtime updates. ESB pins one recent release (the same for every Python
/// runtime) so image builds are reproducible; update it here and in
/// docs/docker.md together. boto3 and botocore share the version number
/// since 1.34.
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

/// The base image named `runtime`, if ESB can build one (Debian provides
/// the language: bookworm Python 3.11 and Node.js 18, trixie Python 3.13
/// and Node.js 20; there is no Debian Python 3.12 or Node.js 22).
pub fn base_for(runtime: &str) -> Option<BaseImage> {
    let (runtime, repo, suite, language) = match runtime {
        "python3.11" => (
            "python3.11",
            "esb/python3.11",
            "bookworm",
            Language::Python {
                version: "3.11",
                sdk: sdk_for("python3.11"),
            },
        ),
        "python3.13" => (
            "python3.13",
            "esb/python3.13",
            "trixie",
            Language::Python {
                version: "3.13",
                sdk: sdk_for("python3.13"),
            },
        ),
        "nodejs18.x" => (
            "nodejs18.x",
            "esb/nodejs18",
            "bookworm",
            Language::Node { major: 18 },
        ),
        "nodejs20.x" => (
            "nodejs20.x",
            "esb/nodejs20",
            "trixie",
            Language::Node { major: 20 },
        ),
        "provided" => ("provided", "esb/provided", "bookworm", Language::Provided),
        _ => return None,
    };
    Some(BaseImage {
        runtime,
        repo,
        suite,
        language,
    })
}

/// The base image a zip function of Lambda runtime `runtime` runs on:
/// `python3.13` on its own, other `python3.x` on `python3.11`,
/// `nodejs18.x` / `nodejs20.x` on theirs, every `provided*` on `provided`.
pub fn base_name_for_function(runtime: &str) -> Option<&'static str> {
    Some(match runtime {
        "python3.13" => "python3.13",
        r if r.starts_with("python3") => "python3.11",
        "nodejs18.x" => "nodejs18.x",
        "nodejs20.x" => "nodejs20.x",
        r if r == "provided" || r.starts_with("provided.") => "provided",
        _ => return None,
    })
}

/// Label recording what a base image was built as ([`BaseImage::version_label`]).
pub const LABEL_IMAGE: &str = "io.esb.image";

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
        // Python images are current with the SDK pin (images built before
        // the `io.esb.image` label carry `io.esb.boto3`), others with
        // their version label.
        let (label, want) = match base.language {
            Language::Python { sdk, .. } => ("io.esb.boto3", sdk.to_string()),
            _ => (LABEL_IMAGE, base.version_label()),
        };
        match builder.label(&image, label).await {
            Some(Some(have)) if have == want => {
                output(&format!("{image} already exists (--force to rebuild)"));
                return Ok(false);
            }
            Some(_) => output(&format!(
                "{image} predates this ESB's {runtime} image ({want}): rebuilding it"
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
    let include = match base.language {
        Language::Python { .. } => "--include=python3,ca-certificates",
        Language::Node { .. } => "--include=nodejs,ca-certificates",
        Language::Provided => "--include=ca-certificates",
    };
    let ok = run(
        "debootstrap",
        &["--variant=minbase", include, suite, &root_text, mirror],
        output,
    )
    .await?;
    if !ok {
        return Err(fail(
            "debootstrap failed (it needs root and the Debian mirror)",
        ));
    }
    let mut labels = vec![
        format!("io.esb.runtime={}", base.runtime),
        format!("{LABEL_IMAGE}={}", base.version_label()),
    ];
    match base.language {
        Language::Python { version, sdk } => {
            let ric = python_layer(base.runtime, version, sdk, root, output).await?;
            labels.push(format!(
                "io.esb.awslambdaric={}",
                if ric { "yes" } else { "no" }
            ));
            labels.push(format!("io.esb.boto3={sdk}"));
        }
        Language::Node { major } => {
            let node = root.join("usr/bin/node");
            if !node.is_file() {
                return Err(fail(format!(
                    "Debian {suite} has no Node.js {major} (no /usr/bin/node in the image)"
                )));
            }
        }
        Language::Provided => {}
    }
    prepare_root(root).map_err(|e| fail(format!("preparing the root file system: {e}")))?;
    let changes = vec![
        "ENV PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        "ENV LANG=C.UTF-8".to_string(),
        "ENV LAMBDA_TASK_ROOT=/var/task".to_string(),
        "WORKDIR /var/task".to_string(),
        format!("LABEL {}", labels.join(" ")),
    ];
    import_tree(builder, root, repo, tag, changes, output).await
}

/// awslambdaric (optional: ESB falls back to its built-in bootstrap) and
/// boto3/botocore (required) for the image's Python. Returns whether
/// awslambdaric installed.
async fn python_layer(
    runtime: &str,
    version: &str,
    sdk: &str,
    root: &Path,
    output: &mut (dyn FnMut(&str) + Send),
) -> Result<bool, ImageBuildError> {
    let site = root.join(format!("usr/local/lib/python{version}/dist-packages"));
    std::fs::create_dir_all(&site).map_err(|e| fail(e.to_string()))?;
    let site_text = site.to_string_lossy().into_owned();
    output(&format!("installing awslambdaric for Python {version}"));
    let ric = pip_target(&site_text, version, &["awslambdaric"], output).await;
    if !ric {
        output("warning: awslambdaric did not install; the image uses ESB's built-in bootstrap");
    }
    // The AWS SDK the Lambda runtime ships: functions import boto3 without
    // packaging it. Required: an image without it would fail such apps.
    let boto3 = format!("boto3=={sdk}");
    let botocore = format!("botocore=={sdk}");
    output(&format!(
        "installing {boto3} {botocore} (as AWS's {runtime} runtime)"
    ));
    if !pip_target(&site_text, version, &[&boto3, &botocore], output).await {
        return Err(fail(format!(
            "pip could not install {boto3} and {botocore} into the image (the host needs pip and PyPI)"
        )));
    }
    Ok(ric)
}

/// The unprivileged worker user (uid/gid 993:990, like AWS's
/// `sbx_user1051`), the Lambda directories, and nothing a runtime never
/// needs (apt caches, documentation, locales).
fn prepare_root(root: &Path) -> std::io::Result<()> {
    append(
        &root.join("etc/passwd"),
        "sbx_user1051:x:993:990::/tmp:/usr/sbin/nologin",
    )?;
    append(&root.join("etc/group"), "sbx_user1051:x:990:")?;
    for dir in ["var/task", "var/runtime", "opt"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
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
