//! `esb build [FUNCTION...]` and `esb images build python3.11`.
//!
//! `esb build` installs zip functions' and layers' dependencies
//! (`requirements.txt` / `pyproject.toml` with pip, `package.json` with
//! npm) into the data dir ([`esb_app::zip_build`]), and builds
//! `PackageType: Image` functions from their
//! `Metadata.Dockerfile` / `DockerContext` / `DockerTag`; `esb images
//! build` builds ESB's offline runtime base images (debootstrap + import).
//! Neither opens the engine socket: both ask an agent (`--agent URL`, or a
//! builds-only `esb agent` child started for the command), as `esb up
//! --runtime docker` does for its on-demand builds ([`ensure_images`]). The
//! builds themselves live in `esb-runtimes-docker`, inside the agent.

use std::process::ExitCode;

use anyhow::Context;
use esb_agent_client::ImageBuild;
use esb_config::SettingsLayer;

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
    /// Build through this agent (`http://host:port`; the context paths must
    /// exist on its machine) instead of a local one.
    #[arg(long, value_name = "URL")]
    pub agent: Option<String>,
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
        /// Build through this agent (`http://host:port`) instead of a local
        /// one (debootstrap runs on the agent's machine, as root).
        #[arg(long, value_name = "URL")]
        agent: Option<String>,
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

/// Installs the zip functions' and layers' dependencies, printing
/// progress; returns how many jobs there were.
fn build_zip(
    settings: &esb_config::Settings,
    app: &esb_template::AppModel,
    only: &[String],
) -> anyhow::Result<usize> {
    let jobs = esb_app::zip_build::jobs(app, &settings.data_dir, only);
    let options = esb_app::checks::launch_options(settings);
    let total = jobs.len();
    for (i, job) in jobs.iter().enumerate() {
        let started = std::time::Instant::now();
        let what = match &job.language {
            esb_app::zip_build::Language::Python(r) => format!("pip install for {r}"),
            esb_app::zip_build::Language::Node(r) => format!("npm install --omit=dev for {r}"),
        };
        eprintln!(
            "[{}/{total}] {}: {what} from {}",
            i + 1,
            job.label,
            job.source.display()
        );
        let outcome = esb_app::zip_build::run(job, &options, &mut |line| {
            eprintln!("    {line}");
        })
        .with_context(|| format!("cannot build {}", job.label))?;
        match outcome {
            esb_app::zip_build::BuildOutcome::UpToDate => eprintln!(
                "[{}/{total}] {}: up to date ({})",
                i + 1,
                job.label,
                job.out.display()
            ),
            esb_app::zip_build::BuildOutcome::Built => eprintln!(
                "[{}/{total}] {}: built into {} in {:.1} s",
                i + 1,
                job.label,
                job.out.display(),
                started.elapsed().as_secs_f64()
            ),
        }
    }
    Ok(total)
}

/// Runs `esb build`.
pub async fn run(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let settings = args.common.settings(SettingsLayer::default())?;
    let loaded = crate::app::load_template(&settings)?;
    for name in &args.functions {
        if !loaded
            .app
            .functions
            .iter()
            .any(|f| f.name == *name || f.logical_id == *name)
        {
            anyhow::bail!("no function {name} in the template");
        }
    }
    let zip_jobs = build_zip(&settings, &loaded.app, &args.functions)?;
    // Named functions that are not image functions were handled above.
    let image_names: Vec<String> = args
        .functions
        .iter()
        .filter(|n| {
            loaded.app.functions.iter().any(|f| {
                (f.name == **n || f.logical_id == **n)
                    && matches!(f.code, esb_template::FunctionCode::Image { .. })
            })
        })
        .cloned()
        .collect();
    if !args.functions.is_empty() && image_names.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = image_builds(&loaded.app, &image_names)?;
    if jobs.is_empty() {
        if zip_jobs == 0 {
            println!(
                "nothing to build: no function or layer has a requirements.txt, pyproject.toml or package.json, and no image function has a Metadata.Dockerfile"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let agent = crate::docker::start_build_agent(args.agent.as_deref()).await?;
    let result = build_all(agent.agent(), &jobs).await;
    agent.shutdown().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn build_all(
    agent: &esb_agent_client::AgentBackend,
    jobs: &[ImageBuild],
) -> anyhow::Result<()> {
    for job in jobs {
        println!(
            "building {} for function {} ({} in {})",
            job.tag,
            job.function,
            job.dockerfile,
            job.context.display()
        );
        let (_, output) = agent
            .build_image(job, false)
            .await
            .with_context(|| format!("cannot build the image of function {}", job.function))?;
        for line in output {
            println!("  {line}");
        }
        println!("built {}", job.tag);
    }
    Ok(())
}

/// `esb up --runtime docker`: has the agent build the images that are
/// missing, before any worker starts.
pub async fn ensure_images(
    app: &esb_template::AppModel,
    agent: &esb_agent_client::AgentBackend,
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

/// Runs `esb images`.
pub async fn run_images(args: &ImagesArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        ImagesCommand::Build {
            runtime,
            force,
            agent,
        } => {
            let agent = crate::docker::start_build_agent(agent.as_deref()).await?;
            eprintln!("building the {runtime} base image (debootstrap: a few minutes)");
            let result = agent.agent().build_base_image(runtime, *force).await;
            agent.shutdown().await;
            let (built, output) =
                result.with_context(|| format!("cannot build the {runtime} base image"))?;
            for line in output {
                println!("{line}");
            }
            if !built {
                println!("nothing to do");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(yaml: &str) -> esb_template::AppModel {
        let dir = std::env::temp_dir().join(format!("esb-build-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Tests run in parallel threads: each call gets its own file.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("t-{n}.yaml"));
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
