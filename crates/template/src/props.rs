//! The properties SAM knows for the resource and event types ESB models,
//! and the check that warns about any other key with the nearest known
//! name (`Timout` → "did you mean Timeout?"), located in the source.
//!
//! The tables follow the SAM specification's resource pages; a key missing
//! here only costs a spurious warning, never a refused template.

use crate::diag::DiagnosticKind;
use crate::node::Node;
use crate::resolve::Ctx;

const FUNCTION: &[&str] = &[
    "Architectures",
    "AssumeRolePolicyDocument",
    "AutoPublishAlias",
    "AutoPublishAliasAllProperties",
    "AutoPublishCodeSha256",
    "CapacityProviderConfig",
    "CodeSigningConfigArn",
    "CodeUri",
    "DeadLetterQueue",
    "DeploymentPreference",
    "Description",
    "DurableConfig",
    "Environment",
    "EphemeralStorage",
    "EventInvokeConfig",
    "Events",
    "FileSystemConfigs",
    "FunctionName",
    "FunctionScalingConfig",
    "FunctionUrlConfig",
    "Handler",
    "ImageConfig",
    "ImageUri",
    "InlineCode",
    "KmsKeyArn",
    "Layers",
    "LoggingConfig",
    "MemorySize",
    "PackageType",
    "PermissionsBoundary",
    "Policies",
    "PropagateTags",
    "ProvisionedConcurrencyConfig",
    "PublishToLatestPublished",
    "RecursiveLoop",
    "ReservedConcurrentExecutions",
    "Role",
    "RolePath",
    "Runtime",
    "RuntimeManagementConfig",
    "SnapStart",
    "SourceKMSKeyArn",
    "Tags",
    "TenancyConfig",
    "Timeout",
    "Tracing",
    "VersionDeletionPolicy",
    "VersionDescription",
    "VpcConfig",
];

const API: &[&str] = &[
    "AccessLogSetting",
    "AlwaysDeploy",
    "ApiKeySourceType",
    "Auth",
    "BinaryMediaTypes",
    "CacheClusterEnabled",
    "CacheClusterSize",
    "CanarySetting",
    "Cors",
    "DefinitionBody",
    "DefinitionUri",
    "Description",
    "DisableExecuteApiEndpoint",
    "Domain",
    "EndpointAccessMode",
    "EndpointConfiguration",
    "FailOnWarnings",
    "GatewayResponses",
    "MergeDefinitions",
    "MethodSettings",
    "MinimumCompressionSize",
    "Mode",
    "Models",
    "Name",
    "OpenApiVersion",
    "Policy",
    "PropagateTags",
    "SecurityPolicy",
    "StageName",
    "Tags",
    "TracingEnabled",
    "Variables",
];

const HTTP_API: &[&str] = &[
    "AccessLogSettings",
    "Auth",
    "CorsConfiguration",
    "DefaultRouteSettings",
    "DefinitionBody",
    "DefinitionUri",
    "Description",
    "DisableExecuteApiEndpoint",
    "Domain",
    "FailOnWarnings",
    "Name",
    "PropagateTags",
    "RouteSettings",
    "StageName",
    "StageVariables",
    "Tags",
];

const SIMPLE_TABLE: &[&str] = &[
    "PointInTimeRecoverySpecification",
    "PrimaryKey",
    "ProvisionedThroughput",
    "SSESpecification",
    "TableName",
    "Tags",
];

const LAYER_VERSION: &[&str] = &[
    "CompatibleArchitectures",
    "CompatibleRuntimes",
    "ContentUri",
    "Description",
    "LayerName",
    "LicenseInfo",
    "PublishLambdaVersion",
    "RetentionPolicy",
];

/// Keys of an entry under a function's `Events`.
const EVENT: &[&str] = &["Type", "Properties"];

const API_EVENT: &[&str] = &[
    "Auth",
    "Method",
    "Path",
    "RequestModel",
    "RequestParameters",
    "ResponseTransferMode",
    "RestApiId",
    "TimeoutInMillis",
];

const HTTP_API_EVENT: &[&str] = &[
    "ApiId",
    "Auth",
    "Method",
    "Path",
    "PayloadFormatVersion",
    "RouteSettings",
    "TimeoutInMillis",
];

const SCHEDULE_EVENT: &[&str] = &[
    "DeadLetterConfig",
    "Description",
    "Enabled",
    "Input",
    "Name",
    "RetryPolicy",
    "Schedule",
    "State",
];

const SCHEDULE_V2_EVENT: &[&str] = &[
    "DeadLetterConfig",
    "Description",
    "EndDate",
    "FlexibleTimeWindow",
    "GroupName",
    "Input",
    "KmsKeyArn",
    "Name",
    "OmitName",
    "PermissionsBoundary",
    "RetryPolicy",
    "RoleArn",
    "ScheduleExpression",
    "ScheduleExpressionTimezone",
    "StartDate",
    "State",
];

const S3_EVENT: &[&str] = &["Bucket", "Events", "Filter"];

/// Known properties of a SAM resource type ESB models.
pub(crate) fn resource_properties(rtype: &str) -> Option<&'static [&'static str]> {
    match rtype {
        "AWS::Serverless::Function" => Some(FUNCTION),
        "AWS::Serverless::Api" => Some(API),
        "AWS::Serverless::HttpApi" => Some(HTTP_API),
        "AWS::Serverless::SimpleTable" => Some(SIMPLE_TABLE),
        "AWS::Serverless::LayerVersion" => Some(LAYER_VERSION),
        _ => None,
    }
}

/// Known properties of a function event source type ESB models.
fn event_properties(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Api" => Some(API_EVENT),
        "HttpApi" => Some(HTTP_API_EVENT),
        "Schedule" => Some(SCHEDULE_EVENT),
        "ScheduleV2" => Some(SCHEDULE_V2_EVENT),
        "S3" => Some(S3_EVENT),
        _ => None,
    }
}

/// Warns about each key of `map` that is not in `known`, at `path.key`.
pub(crate) fn check_keys(map: &Node, known: &[&str], path: &str, what: &str, ctx: &mut Ctx<'_>) {
    let Node::Map(entries) = map else { return };
    for (key, _) in entries {
        if known.contains(&key.as_str()) {
            continue;
        }
        ctx.warn(
            DiagnosticKind::UnknownProperty,
            &format!("{path}.{key}"),
            unknown_message(key, known, what),
        );
    }
}

/// `Timout is not a property of ...; did you mean Timeout?`
pub(crate) fn unknown_message(key: &str, known: &[&str], what: &str) -> String {
    match nearest(key, known) {
        Some(near) => format!("{key} is not a property of {what}; did you mean {near}?"),
        None => format!("{key} is not a property of {what}; ignored"),
    }
}

/// Checks a SAM resource's own properties (before `Globals` are merged)
/// and, for a function, its `Events` entries.
pub(crate) fn check_resource(rtype: &str, props: &Node, path: &str, ctx: &mut Ctx<'_>) {
    let Some(known) = resource_properties(rtype) else {
        return;
    };
    let props_path = format!("{path}.Properties");
    check_keys(props, known, &props_path, rtype, ctx);
    if rtype != "AWS::Serverless::Function" {
        return;
    }
    let Some(Node::Map(events)) = props.get("Events") else {
        return;
    };
    for (name, event) in events {
        let event_path = format!("{props_path}.Events.{name}");
        check_keys(event, EVENT, &event_path, "an event source", ctx);
        let Some(kind) = event.get("Type").and_then(Node::as_str) else {
            continue;
        };
        if let (Some(known), Some(p)) = (event_properties(kind), event.get("Properties")) {
            check_keys(
                p,
                known,
                &format!("{event_path}.Properties"),
                &format!("event type {kind}"),
                ctx,
            );
        }
    }
}

/// The known name closest to `key` (Levenshtein distance, ignoring case),
/// when it is close enough to be a likely typo.
pub(crate) fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let key_lower = key.to_ascii_lowercase();
    let (best, distance) = known
        .iter()
        .map(|k| (*k, distance(&key_lower, &k.to_ascii_lowercase())))
        .min_by_key(|(_, d)| *d)?;
    let allowed = (key.chars().count() / 3).clamp(1, 3);
    (distance <= allowed).then_some(best)
}

/// Levenshtein edit distance, in characters.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("timout", "timeout"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn nearest_names_a_likely_typo_only() {
        assert_eq!(nearest("Timout", FUNCTION), Some("Timeout"));
        assert_eq!(nearest("memorysize", FUNCTION), Some("MemorySize"));
        assert_eq!(nearest("Runtmie", FUNCTION), Some("Runtime"));
        assert_eq!(nearest("Banana", FUNCTION), None);
    }
}
