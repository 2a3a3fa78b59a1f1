//! Renderings of an [`AppModel`]: the text tables `esb validate` prints and
//! the `functions.yml` / `routing.yml` contents `esb generate` writes.
//! Only strings are produced here; writing files is the caller's job.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::ser::Serializer;

use crate::model::{ApiKind, AppModel, FunctionCode, RouteSource, RouteTarget};

/// Formats rows as left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The functions and routes as aligned text tables.
pub fn render_summary(app: &AppModel) -> String {
    let fn_rows: Vec<Vec<String>> = app
        .functions
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                match &f.code {
                    FunctionCode::Image { .. } => "image".to_string(),
                    _ => f.runtime.clone().unwrap_or_else(|| "-".into()),
                },
                f.handler.clone().unwrap_or_else(|| "-".into()),
                format!("{} MB", f.memory_size),
                format!("{} s", f.timeout),
                match (f.reserved_concurrent_executions, f.provisioned_concurrency) {
                    (None, None) => "-".to_string(),
                    (Some(r), None) => r.to_string(),
                    (None, Some(p)) => format!("provisioned {p}"),
                    (Some(r), Some(p)) => format!("{r} (provisioned {p})"),
                },
                {
                    let mut notes = Vec::new();
                    if !f.aliases.is_empty() {
                        notes.push(format!("aka {}", f.aliases.join(", ")));
                    }
                    if f.code_is_zip {
                        notes.push("zip file".to_string());
                    }
                    if let Some(why) = &f.unavailable {
                        notes.push(format!("cannot run: {why}"));
                    }
                    if notes.is_empty() {
                        "-".to_string()
                    } else {
                        notes.join("; ")
                    }
                },
            ]
        })
        .collect();
    let route_rows: Vec<Vec<String>> = app
        .routes
        .iter()
        .map(|r| {
            let mut auth = r.auth.authorizer.clone();
            if r.auth.api_key_required {
                auth.push_str(" + api key");
            }
            vec![
                r.method.clone(),
                r.path.clone(),
                format!(
                    "{} ({}, {})",
                    r.api,
                    match (r.api_kind, r.source) {
                        (_, RouteSource::FunctionUrl) => "URL",
                        (ApiKind::Rest, _) => "REST",
                        (ApiKind::Http, _) => "HTTP",
                    },
                    r.stage
                ),
                match &r.target {
                    RouteTarget::Function { name } => name.clone(),
                    RouteTarget::Unavailable { status, message } => {
                        format!("({status}: {message})")
                    }
                },
                auth,
            ]
        })
        .collect();
    let mut out = format!("Functions ({})\n", app.functions.len());
    out.push_str(&table(
        &[
            "NAME",
            "RUNTIME",
            "HANDLER",
            "MEMORY",
            "TIMEOUT",
            "CONCURRENCY",
            "NOTES",
        ],
        &fn_rows,
    ));
    out.push_str(&format!("\nRoutes ({})\n", app.routes.len()));
    out.push_str(&table(
        &["METHOD", "PATH", "API", "FUNCTION", "AUTH"],
        &route_rows,
    ));
    out
}

/// A map serialised in the order of its entries.
struct Ordered<'a, V>(&'a [(String, V)]);

impl<V: Serialize> Serialize for Ordered<'_, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[derive(Serialize)]
struct BuildEntry {
    context: String,
    dockerfile: String,
}

#[derive(Serialize)]
struct FunctionEntry {
    logical_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    build: Option<BuildEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inline_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handler: Option<String>,
    memory_size: u32,
    timeout: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrency: Option<u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    environment: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct FunctionsFile<'a> {
    functions: Ordered<'a, FunctionEntry>,
}

#[derive(Serialize, PartialEq)]
struct RouteEntry {
    path: String,
    method: String,
    function: String,
}

#[derive(Serialize)]
struct RoutingFile {
    routes: Vec<RouteEntry>,
}

/// A generated file's contents could not be serialised.
#[derive(Debug, thiserror::Error)]
#[error("cannot render {file}: {source}")]
pub struct GenerateError {
    /// Which file.
    pub file: &'static str,
    /// The serialiser's error.
    #[source]
    pub source: serde_norway::Error,
}

/// One file `esb generate` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedFile {
    /// File name inside the output directory.
    pub name: &'static str,
    /// Full contents.
    pub contents: String,
}

fn header(template: &str) -> String {
    format!("# Generated by `esb generate` from {template}. Do not edit: regenerate instead.\n")
}

/// `functions.yml`: every function keyed by its name.
pub fn functions_yml(app: &AppModel, template: &str) -> Result<String, GenerateError> {
    let entries: Vec<(String, FunctionEntry)> = app
        .functions
        .iter()
        .map(|f| {
            let mut e = FunctionEntry {
                logical_id: f.logical_id.clone(),
                image: None,
                build: None,
                code: None,
                inline_code: None,
                runtime: f.runtime.clone(),
                handler: f.handler.clone(),
                memory_size: f.memory_size,
                timeout: f.timeout,
                max_concurrency: f.reserved_concurrent_executions,
                environment: f.environment.clone(),
            };
            match &f.code {
                FunctionCode::Zip { code_uri } => e.code = Some(code_uri.display().to_string()),
                FunctionCode::S3 { uri } => e.code = Some(uri.clone()),
                FunctionCode::Inline { code } => e.inline_code = Some(code.clone()),
                FunctionCode::Image {
                    image_uri,
                    dockerfile,
                    docker_context,
                    docker_tag,
                    ..
                } => match (dockerfile, image_uri) {
                    (Some(df), _) => {
                        e.image = Some(format!(
                            "{}:{}",
                            f.logical_id.to_lowercase(),
                            docker_tag.as_deref().unwrap_or("latest")
                        ));
                        e.build = Some(BuildEntry {
                            context: docker_context
                                .as_ref()
                                .unwrap_or(&app.base_dir)
                                .display()
                                .to_string(),
                            dockerfile: df.clone(),
                        });
                    }
                    (None, uri) => e.image = uri.clone(),
                },
            }
            (f.name.clone(), e)
        })
        .collect();
    let body = serde_norway::to_string(&FunctionsFile {
        functions: Ordered(&entries),
    })
    .map_err(|source| GenerateError {
        file: "functions.yml",
        source,
    })?;
    Ok(format!("{}{body}", header(template)))
}

/// `routing.yml`: every route as path, method and function name (routes
/// ESB cannot serve, whose target is `Unavailable`, are left out). Routes
/// that are identical once the API is dropped are written once.
pub fn routing_yml(app: &AppModel, template: &str) -> Result<String, GenerateError> {
    let mut routes: Vec<RouteEntry> = Vec::new();
    for r in &app.routes {
        if matches!(r.target, RouteTarget::Unavailable { .. }) {
            continue; // nothing to call
        }
        let e = RouteEntry {
            path: r.path.clone(),
            method: r.method.clone(),
            function: r.function_name.clone(),
        };
        if !routes.contains(&e) {
            routes.push(e);
        }
    }
    let body =
        serde_norway::to_string(&RoutingFile { routes }).map_err(|source| GenerateError {
            file: "routing.yml",
            source,
        })?;
    Ok(format!("{}{body}", header(template)))
}

/// Both files `esb generate` writes, in writing order.
pub fn generate(app: &AppModel, template: &str) -> Result<Vec<GeneratedFile>, GenerateError> {
    Ok(vec![
        GeneratedFile {
            name: "functions.yml",
            contents: functions_yml(app, template)?,
        },
        GeneratedFile {
            name: "routing.yml",
            contents: routing_yml(app, template)?,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ResolveOptions, parse_str};
    use std::path::Path;

    const T: &str = "\
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.12
    Handler: app.handler
Resources:
  Hello:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: hello
      CodeUri: src/hello
      ReservedConcurrentExecutions: 2
      Environment: {Variables: {A: '1'}}
      Events:
        Get: {Type: Api, Properties: {Path: /hello, Method: get}}
        Both: {Type: HttpApi, Properties: {Path: /hello, Method: get}}
  Img:
    Type: AWS::Serverless::Function
    Properties:
      PackageType: Image
    Metadata: {Dockerfile: Dockerfile, DockerContext: ./img, DockerTag: v1}
";

    fn app() -> AppModel {
        parse_str(
            T,
            "template.yaml",
            Path::new("/proj"),
            &ResolveOptions::new(),
        )
        .unwrap()
        .app
    }

    #[test]
    fn summary_lists_functions_and_routes_in_columns() {
        let s = render_summary(&app());
        assert!(s.contains("Functions (2)\n"), "{s}");
        assert!(
            s.contains("hello  python3.12  app.handler  128 MB  3 s      2            aka Hello\n"),
            "{s}"
        );
        assert!(s.contains("Routes (2)\n"), "{s}");
        assert!(s.contains("Img    image       -            128 MB"), "{s}");
        assert!(
            s.contains("GET     /hello  ServerlessRestApi (REST, Prod)      hello     NONE\n"),
            "{s}"
        );
    }

    #[test]
    fn functions_yml_has_code_image_and_environment() {
        let y = functions_yml(&app(), "template.yaml").unwrap();
        let v: serde_norway::Value = serde_norway::from_str(&y).unwrap();
        let hello = &v["functions"]["hello"];
        assert_eq!(hello["code"].as_str(), Some("/proj/src/hello"));
        assert_eq!(hello["handler"].as_str(), Some("app.handler"));
        assert_eq!(hello["environment"]["A"].as_str(), Some("1"));
        assert_eq!(hello["max_concurrency"].as_u64(), Some(2));
        let img = &v["functions"]["Img"];
        assert_eq!(img["image"].as_str(), Some("img:v1"));
        assert_eq!(img["build"]["context"].as_str(), Some("/proj/img"));
        assert!(y.starts_with("# Generated by `esb generate` from template.yaml"));
    }

    #[test]
    fn routing_yml_writes_a_route_once_per_method_path_and_function() {
        let y = routing_yml(&app(), "template.yaml").unwrap();
        let v: serde_norway::Value = serde_norway::from_str(&y).unwrap();
        let routes = v["routes"].as_sequence().unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0]["path"].as_str(), Some("/hello"));
        assert_eq!(routes[0]["method"].as_str(), Some("GET"));
        assert_eq!(routes[0]["function"].as_str(), Some("hello"));
    }
}
