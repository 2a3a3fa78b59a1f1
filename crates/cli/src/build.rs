//! `esb build [FUNCTION...]` and `esb images build python3.11`.
//!
//! `esb build` builds `PackageType: Image` functions from their
//! `Metadata.Dockerfile` / `DockerContext` / `DockerTag`. It is a CLI
//! invocation of its own, so it opens the engine socket directly; the
//! on-demand build of `esb up --runtime docker` goes through the agent
//! instead ([`ensure_images`]), since the gateway process never holds the
//! socket. The build itself lives in `esb-runtimes-docker`.

use std::io::Write;
use std::process::{ExitCode, Stdio};

use anyhow::Context;
use esb_config::SettingsLayer;
use esb_runtimes_docker::{ImageBuild, ImageBuilder};

use crate::settings::CommonArgs;

/// Arguments of `esb build`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Template, overrides and configuration file.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Functions to build (default: every image function with a Dockerfile).
    #[arg(value_name = "FUNCTION")]
    pub functions: Vec<String>,
}

/// Arguments of `esb images`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: ImagesCommand,
}

/// `esb images` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ImagesCommand {
    /// Build an offline runtime base image (`python3.11` →
    /// esb/python3.11:latest) from Debian packages, no registry needed.
    Build {
        /// Image to build.
        #[arg(value_name = "RUNTIME", default_value = "python3.11")]
        runtime: String,
        /// Rebuild even when the image exists.
        #[arg(long)]
        force: bool,
    },
}

/// The image builds a template asks for: image functions with a
/// `Metadata.Dockerfile` (those with only `ImageUri` are pulled or
/// provided by the user, never built). `only` restricts to these function
/// names or logical ids; an unknown or unbuildable name is an error.
pub fn image_builds(
    app: &esb_template::AppModel,
    only: &[String],
) -> anyhow::Result<Vec<ImageBuild>> {
    let mut jobs = Vec::new();
    for f in &app.functions {
        let wanted = only.is_empty() || only.iter().any(|n| *n == f.name || *n == f.logical_id);
        if !wanted {
            continue;
        }
        let esb_template::FunctionCode::Image {
            dockerfile: Some(dockerfile),
            docker_context,
            ..
        } = &f.code
        else {
            if !only.is_empty() {
                anyhow::bail!(
                    "function {} has no Metadata.Dockerfile (only PackageType: Image functions with a Dockerfile are built)",
                    f.name
                );
            }
            continue;
        };
        let Some(tag) = crate::app::image_tag(f) else {
            continue;
        };
        jobs.push(ImageBuild {
            function: f.name.clone(),
            context: docker_context
                .clone()
                .unwrap_or_else(|| app.base_dir.clone()),
            dockerfile: dockerfile.clone(),
            tag,
        });
    }
    for name in only {
        if !app
            .functions
            .iter()
            .any(|f| f.name == *name || f.logical_id == *name)
        {
            anyhow::bail!("no function {name} in the template");
        }
    }
    Ok(jobs)
}

/// Runs `esb build`.
pub async fn run(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let settings = args.common.settings(SettingsLayer::default())?;
    let loaded = crate::app::load_template(&settings)?;
    let jobs = image_builds(&loaded.app, &args.functions)?;
    if jobs.is_empty() {
        println!("nothing to build: the template has no image function with a Metadata.Dockerfile");
        return Ok(ExitCode::SUCCESS);
    }
    let builder = ImageBuilder::connect()
        .await
        .context("cannot reach the Docker engine (is dockerd running?)")?;
    for job in &jobs {
        println!(
            "building {} for function {} ({} in {})",
            job.tag,
            job.function,
            job.dockerfile,
            job.context.display()
        );
        let mut print = |line: &str| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "  {line}");
        };
        builder.build(job, &mut print).await?;
        println!("built {}", job.tag);
    }
    Ok(ExitCode::SUCCESS)
}

/// `esb up --runtime docker`: has the agent build the images that are
/// missing, before any worker starts.
pub async fn ensure_images(
    app: &esb_template::AppModel,
    agent: &esb_agent::AgentBackend,
) -> anyhow::Result<()> {
    for job in image_builds(app, &[])? {
        let (built, output) = agent
            .build_image(&job, true)
            .await
            .with_context(|| format!("cannot build the image of function {}", job.function))?;
        if built {
            for line in output {
                eprintln!("  {line}");
            }
            eprintln!("built {} for function {}", job.tag, job.function);
        }
    }
    Ok(())
}

/// The base image script, embedded so an installed `esb` needs no checkout.
const BUILD_IMAGES_SCRIPT: &str = include_str!("../../../scripts/build-images.sh");

/// Runs `esb images`.
pub fn run_images(args: &ImagesArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        ImagesCommand::Build { runtime, force } => {
            let mut child = std::process::Command::new("bash")
                .args(["-s", "--", runtime])
                .env("FORCE", if *force { "1" } else { "0" })
                .stdin(Stdio::piped())
                .spawn()
                .context("cannot run bash")?;
            child
                .stdin
                .take()
                .context("bash has no standard input")?
                .write_all(BUILD_IMAGES_SCRIPT.as_bytes())?;
            let status = child.wait()?;
            Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(yaml: &str) -> esb_template::AppModel {
        let dir = std::env::temp_dir().join(format!("esb-build-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("t-{}.yaml", yaml.len()));
        std::fs::write(&path, yaml).unwrap();
        esb_template::load(&path, &esb_template::ResolveOptions::default())
            .unwrap()
            .app
    }

    const TEMPLATE: &str = r#"
Transform: AWS::Serverless-2016-10-31
Resources:
  HelloImage:
    Type: AWS::Serverless::Function
    Properties:
      PackageType: Image
    Metadata:
      Dockerfile: Dockerfile
      DockerContext: ./hello
      DockerTag: v1
  Pulled:
    Type: AWS::Serverless::Function
    Properties:
      PackageType: Image
      ImageUri: public.ecr.aws/x/y:1
  Zip:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      CodeUri: ./zip
"#;

    #[test]
    fn builds_only_image_functions_with_a_dockerfile() {
        let app = app(TEMPLATE);
        let jobs = image_builds(&app, &[]).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].tag, "helloimage:v1");
        assert_eq!(jobs[0].dockerfile, "Dockerfile");
        assert!(jobs[0].context.ends_with("hello"), "{:?}", jobs[0].context);
    }

    #[test]
    fn named_functions_must_exist_and_be_buildable() {
        let app = app(TEMPLATE);
        let err = image_builds(&app, &["Nope".to_string()]).unwrap_err();
        assert!(err.to_string().contains("no function Nope"), "{err}");
        let err = image_builds(&app, &["Zip".to_string()]).unwrap_err();
        assert!(err.to_string().contains("no Metadata.Dockerfile"), "{err}");
        assert_eq!(
            image_builds(&app, &["HelloImage".to_string()])
                .unwrap()
                .len(),
            1
        );
    }
}
