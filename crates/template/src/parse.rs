//! From text to [`Sections`]: YAML/JSON parsing (after the size and depth
//! limits of [`crate::limits`]), the shape checks every template must pass,
//! unknown-property warnings ([`crate::props`]), and the SAM `Globals`
//! merge.

use crate::diag::{Diagnostic, DiagnosticKind, Severity};
use crate::node::Node;
use crate::resolve::{Ctx, Resource, Sections};

/// Parses the text into a tree. Syntax problems are reported into `ctx`.
pub(crate) fn parse_tree(text: &str, json: bool, ctx: &mut Ctx<'_>) -> Option<Node> {
    if let Err(e) = crate::limits::check(text) {
        push_at(ctx, DiagnosticKind::TooLarge, e.line, e.column, e.message);
        return None;
    }
    if json {
        // serde_json gives the better message for a JSON file; the YAML
        // parser then gives the key order (JSON is YAML).
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                push_at(
                    ctx,
                    DiagnosticKind::Syntax,
                    e.line(),
                    e.column(),
                    format!("invalid JSON: {msg}"),
                );
                return None;
            }
        };
        if let Ok(y) = serde_norway::from_str::<serde_norway::Value>(text)
            && let Ok(n) = Node::from_yaml(y)
        {
            return Some(n);
        }
        return Some(Node::from_json(value));
    }
    let value: serde_norway::Value = match serde_norway::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            let (line, col) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            push_at(
                ctx,
                DiagnosticKind::Syntax,
                line,
                col,
                format!("invalid YAML: {msg}"),
            );
            return None;
        }
    };
    match Node::from_yaml(value) {
        Ok(n) => Some(n),
        Err(tag) => {
            let pos = text.lines().enumerate().find_map(|(i, l)| {
                l.find(&format!("{} ", tag.0))
                    .or_else(|| l.find(&tag.0))
                    .map(|c| (i + 1, c + 1))
            });
            let (line, col) = pos.unwrap_or((0, 0));
            push_at(
                ctx,
                DiagnosticKind::UnknownTag,
                line,
                col,
                format!(
                    "unknown tag {}: not a CloudFormation intrinsic function",
                    tag.0
                ),
            );
            None
        }
    }
}

/// Reads a YAML or JSON document (an OpenAPI file, an `AWS::Include`
/// snippet) into a tree; short-form tags become intrinsics.
pub(crate) fn read_node(path: &std::path::Path) -> Result<Node, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    crate::limits::check(&text).map_err(|e| match e.line {
        0 => e.message,
        line => format!("line {line} column {}: {}", e.column, e.message),
    })?;
    let value: serde_norway::Value = serde_norway::from_str(&text).map_err(|e| e.to_string())?;
    Node::from_yaml(value).map_err(|t| format!("unknown tag {}", t.0))
}

fn push_at(ctx: &mut Ctx<'_>, kind: DiagnosticKind, line: usize, col: usize, message: String) {
    ctx.diags.push(Diagnostic {
        severity: Severity::Error,
        kind,
        file: ctx.file.clone(),
        line: (line > 0).then_some(line),
        column: (line > 0 && col > 0).then_some(col),
        path: String::new(),
        message,
    });
}

fn entries(node: Option<&Node>) -> Vec<(String, Node)> {
    match node {
        Some(Node::Map(e)) => e.clone(),
        _ => Vec::new(),
    }
}

/// Splits the tree into sections, checks the shapes a runnable template
/// must have, and merges `Globals` into the SAM resources.
pub(crate) fn sections(root: Node, ctx: &mut Ctx<'_>) -> Option<Sections> {
    let Node::Map(_) = root else {
        ctx.error(DiagnosticKind::NotAMapping, "", "template is not a mapping");
        return None;
    };
    for section in ["Parameters", "Mappings", "Conditions", "Globals", "Outputs"] {
        if let Some(v) = root.get(section)
            && !matches!(v, Node::Map(_) | Node::Null)
        {
            ctx.error(
                DiagnosticKind::NotAMapping,
                section,
                format!("{section} is not a mapping"),
            );
        }
    }
    let resources_node = match root.get("Resources") {
        Some(Node::Map(r)) => r.clone(),
        Some(_) => {
            ctx.error(
                DiagnosticKind::NotAMapping,
                "Resources",
                "Resources is not a mapping",
            );
            return None;
        }
        None => {
            ctx.error(
                DiagnosticKind::NotAMapping,
                "",
                "template has no Resources section",
            );
            return None;
        }
    };
    let globals = root.get("Globals").cloned().unwrap_or(Node::Null);
    check_globals(&globals, ctx);

    let mut resources = Vec::new();
    for (id, def) in resources_node {
        let path = format!("Resources.{id}");
        if !matches!(def, Node::Map(_)) {
            ctx.error(
                DiagnosticKind::NotAMapping,
                &path,
                "resource is not a mapping",
            );
            continue;
        }
        let Some(rtype) = def.get("Type").and_then(Node::as_str).map(str::to_string) else {
            ctx.error(DiagnosticKind::NotAMapping, &path, "resource has no Type");
            continue;
        };
        let props = match def.get("Properties") {
            None | Some(Node::Null) => Node::Map(Vec::new()),
            Some(p @ Node::Map(_)) => {
                crate::props::check_resource(&rtype, p, &path, ctx);
                p.clone()
            }
            Some(_) => {
                ctx.error(
                    DiagnosticKind::NotAMapping,
                    &format!("{path}.Properties"),
                    "Properties is not a mapping",
                );
                continue;
            }
        };
        let section = match rtype.as_str() {
            "AWS::Serverless::Function" => Some("Function"),
            "AWS::Serverless::Api" => Some("Api"),
            "AWS::Serverless::HttpApi" => Some("HttpApi"),
            "AWS::Serverless::SimpleTable" => Some("SimpleTable"),
            "AWS::Serverless::LayerVersion" => Some("LayerVersion"),
            "AWS::Serverless::StateMachine" => Some("StateMachine"),
            _ => None,
        };
        let props = match section.and_then(|s| globals.get(s)) {
            Some(g) => merge(&allowed_globals(section.unwrap_or(""), g), &props),
            None => props,
        };
        resources.push(Resource {
            condition: def
                .get("Condition")
                .and_then(Node::as_str)
                .map(str::to_string),
            metadata: def.get("Metadata").cloned().unwrap_or(Node::Null),
            id,
            rtype,
            props,
        });
    }
    Some(Sections {
        parameters: entries(root.get("Parameters")),
        mappings: root.get("Mappings").cloned().unwrap_or(Node::Null),
        conditions: entries(root.get("Conditions")),
        resources,
        globals,
        outputs: entries(root.get("Outputs")),
    })
}

const FUNCTION_GLOBALS: &[&str] = &[
    "Handler",
    "Runtime",
    "CodeUri",
    "DeadLetterQueue",
    "Description",
    "MemorySize",
    "Timeout",
    "VpcConfig",
    "Environment",
    "Tags",
    "PropagateTags",
    "Tracing",
    "KmsKeyArn",
    "AutoPublishAlias",
    "AutoPublishAliasAllProperties",
    "Layers",
    "DeploymentPreference",
    "RolePath",
    "PermissionsBoundary",
    "ReservedConcurrentExecutions",
    "ProvisionedConcurrencyConfig",
    "AssumeRolePolicyDocument",
    "EventInvokeConfig",
    "FileSystemConfigs",
    "CodeSigningConfigArn",
    "Architectures",
    "SnapStart",
    "EphemeralStorage",
    "FunctionUrlConfig",
    "RuntimeManagementConfig",
    "LoggingConfig",
    "RecursiveLoop",
    "SourceKMSKeyArn",
    "TenancyConfig",
    "DurableConfig",
    "CapacityProviderConfig",
    "FunctionScalingConfig",
    "PublishToLatestPublished",
    "VersionDeletionPolicy",
];
const API_GLOBALS: &[&str] = &[
    "Auth",
    "Name",
    "DefinitionUri",
    "CacheClusterEnabled",
    "CacheClusterSize",
    "MergeDefinitions",
    "Variables",
    "EndpointConfiguration",
    "MethodSettings",
    "BinaryMediaTypes",
    "MinimumCompressionSize",
    "Cors",
    "GatewayResponses",
    "AccessLogSetting",
    "CanarySetting",
    "TracingEnabled",
    "OpenApiVersion",
    "Domain",
    "AlwaysDeploy",
    "PropagateTags",
    "SecurityPolicy",
    "EndpointAccessMode",
];
const HTTP_API_GLOBALS: &[&str] = &[
    "Auth",
    "AccessLogSettings",
    "StageVariables",
    "Tags",
    "CorsConfiguration",
    "DefaultRouteSettings",
    "Domain",
    "RouteSettings",
    "FailOnWarnings",
    "PropagateTags",
];

fn allowed_keys(section: &str) -> Option<&'static [&'static str]> {
    match section {
        "Function" => Some(FUNCTION_GLOBALS),
        "Api" => Some(API_GLOBALS),
        "HttpApi" => Some(HTTP_API_GLOBALS),
        "SimpleTable" => Some(&["SSESpecification"]),
        "LayerVersion" => Some(&["PublishLambdaVersion"]),
        "StateMachine" => Some(&["PropagateTags"]),
        _ => None,
    }
}

/// The part of a `Globals` section SAM would accept (the rest was warned
/// about in [`check_globals`]).
fn allowed_globals(section: &str, g: &Node) -> Node {
    match (g, allowed_keys(section)) {
        (Node::Map(e), Some(keys)) => Node::Map(
            e.iter()
                .filter(|(k, _)| keys.contains(&k.as_str()))
                .cloned()
                .collect(),
        ),
        _ => g.clone(),
    }
}

fn check_globals(globals: &Node, ctx: &mut Ctx<'_>) {
    let Node::Map(sections) = globals else { return };
    for (section, body) in sections {
        let path = format!("Globals.{section}");
        let Some(keys) = allowed_keys(section) else {
            ctx.warn(
                DiagnosticKind::UnsupportedGlobal,
                &path,
                format!("SAM has no Globals section {section}; ignored"),
            );
            continue;
        };
        let Node::Map(e) = body else {
            ctx.error(
                DiagnosticKind::NotAMapping,
                &path,
                format!("Globals.{section} is not a mapping"),
            );
            continue;
        };
        for (k, _) in e {
            if !keys.contains(&k.as_str()) {
                let hint = crate::props::nearest(k, keys)
                    .map(|near| format!(" (did you mean {near}?)"))
                    .unwrap_or_default();
                ctx.warn(
                    DiagnosticKind::UnsupportedGlobal,
                    &format!("{path}.{k}"),
                    format!("{k} is not allowed in Globals.{section}; ignored{hint}"),
                );
            }
        }
    }
}

/// SAM's merge: maps merge key by key (the resource wins), lists append
/// (global items first), anything else (scalars, intrinsics, mismatched
/// types) is replaced by the resource's value.
pub(crate) fn merge(global: &Node, local: &Node) -> Node {
    match (global, local) {
        (Node::Map(g), Node::Map(l)) => {
            let mut out = g.clone();
            for (k, lv) in l {
                match out.iter_mut().find(|(gk, _)| gk == k) {
                    Some((_, gv)) => *gv = merge(gv, lv),
                    None => out.push((k.clone(), lv.clone())),
                }
            }
            Node::Map(out)
        }
        (Node::List(g), Node::List(l)) => Node::List(g.iter().chain(l).cloned().collect()),
        (_, l) => l.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(y: &str) -> Node {
        Node::from_yaml(serde_norway::from_str(y).unwrap()).unwrap()
    }

    #[test]
    fn merge_follows_sam_rules() {
        let g = node(
            "{Timeout: 10, Layers: [a], Environment: {Variables: {A: '1', B: '2'}}, MemorySize: !Ref M}",
        );
        let l =
            node("{Timeout: 3, Layers: [b], Environment: {Variables: {B: x}}, MemorySize: 512}");
        let m = merge(&g, &l);
        assert_eq!(m.get("Timeout"), Some(&node("3")));
        assert_eq!(m.get("Layers"), Some(&node("[a, b]")));
        assert_eq!(
            m.get("Environment"),
            Some(&node("{Variables: {A: '1', B: x}}"))
        );
        assert_eq!(m.get("MemorySize"), Some(&node("512")));
    }
}
