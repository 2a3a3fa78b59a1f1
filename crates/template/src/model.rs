//! The typed app model produced from a template. Everything here is
//! resolved: no intrinsic functions remain.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// The whole application as ESB runs it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AppModel {
    /// Template `Description`.
    pub description: Option<String>,
    /// Template `Transform` entries.
    pub transform: Vec<String>,
    /// Directory the template lives in; relative paths are resolved against it.
    pub base_dir: PathBuf,
    /// Parameter values used (override, else default; `None` when neither).
    pub parameters: BTreeMap<String, Option<String>>,
    /// Lambda functions, in template order.
    pub functions: Vec<Function>,
    /// REST and HTTP APIs, explicit first, then the implicit ones in use.
    pub apis: Vec<Api>,
    /// Routes from `Api` and `HttpApi` events, in template order.
    pub routes: Vec<Route>,
    /// DynamoDB tables.
    pub tables: Vec<Table>,
    /// S3 buckets.
    pub buckets: Vec<Bucket>,
    /// Layers defined in the template.
    pub layers: Vec<Layer>,
    /// `Schedule` and `ScheduleV2` events, and `AWS::Events::Rule` /
    /// `AWS::Scheduler::Schedule` resources targeting a function.
    pub schedules: Vec<Schedule>,
    /// Resources ESB does not model (kept for listing).
    pub other_resources: Vec<OtherResource>,
    /// `Outputs` values, resolved (those whose condition holds).
    pub outputs: BTreeMap<String, String>,
}

impl AppModel {
    /// The function with this logical id.
    pub fn function(&self, logical_id: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.logical_id == logical_id)
    }

    /// Alias → canonical function name, for every alias of every function
    /// (the gateway's `function_aliases`).
    pub fn function_aliases(&self) -> std::collections::HashMap<String, String> {
        self.functions
            .iter()
            .flat_map(|f| f.aliases.iter().map(|a| (a.clone(), f.name.clone())))
            .collect()
    }

    /// The API with this logical id (implicit ones included).
    pub fn api(&self, logical_id: &str) -> Option<&Api> {
        self.apis.iter().find(|a| a.logical_id == logical_id)
    }
}

/// One Lambda function.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Function {
    /// Logical id in the template.
    pub logical_id: String,
    /// `FunctionName`, else the logical id (as SAM CLI names it locally).
    pub name: String,
    /// `Runtime` (absent for image functions).
    pub runtime: Option<String>,
    /// `Handler` (absent for image functions unless set).
    pub handler: Option<String>,
    /// Where the code comes from.
    pub code: FunctionCode,
    /// `MemorySize` in MB (default 128).
    pub memory_size: u32,
    /// `Timeout` in seconds (default 3).
    pub timeout: u32,
    /// `Environment.Variables`, resolved to strings.
    pub environment: BTreeMap<String, String>,
    /// `Layers`, in order.
    pub layers: Vec<FunctionLayer>,
    /// `Architectures` (default `[x86_64]`).
    pub architectures: Vec<String>,
    /// `ReservedConcurrentExecutions`.
    pub reserved_concurrent_executions: Option<u32>,
    /// `ProvisionedConcurrencyConfig.ProvisionedConcurrentExecutions`.
    pub provisioned_concurrency: Option<u32>,
    /// `AutoPublishAlias`.
    pub auto_publish_alias: Option<String>,
    /// `FunctionUrlConfig`.
    pub function_url: Option<FunctionUrl>,
    /// `EphemeralStorage.Size` in MB (default 512).
    pub ephemeral_storage: u32,
    /// Every event source, raw.
    pub events: Vec<Event>,
    /// Asynchronous invocation settings, resolved: SAM `EventInvokeConfig`
    /// or an `AWS::Lambda::EventInvokeConfig` resource naming this function
    /// (`MaximumRetryAttempts`, `MaximumEventAgeInSeconds`,
    /// `DestinationConfig.OnSuccess/OnFailure.Destination`, CloudFormation
    /// shape; SAM's `Type` key is kept).
    pub event_invoke_config: Option<serde_json::Value>,
    /// `DeadLetterQueue` (`{Type, TargetArn}` in SAM, `{TargetArn}` in
    /// CloudFormation's `DeadLetterConfig`), resolved.
    pub dead_letter_queue: Option<serde_json::Value>,
    /// Other names that address this function (its `FunctionName` when the
    /// canonical name is a nested `Child/LogicalId`, its logical id when the
    /// canonical name is a `FunctionName`). Never another function's name.
    pub aliases: Vec<String>,
    /// Nested stack path (`""` for the root template, `Child`, `Child/Grandchild`).
    pub stack: String,
    /// `AWS::Serverless::Function` or `AWS::Lambda::Function`.
    pub resource_type: String,
    /// `code` is a local `.zip` file to unpack (see [`crate::unpack_zip`]),
    /// not a directory.
    pub code_is_zip: bool,
    /// Why this function cannot run (`esb up` serves the rest and answers
    /// calls to this one with the reason); `None` when it can.
    pub unavailable: Option<String>,
    /// Its execution role: `Policies`, or the `AWS::IAM::Role` its `Role`
    /// names (see `build/policies.rs`). Not in the serialized model (its
    /// snapshots stay as they were).
    #[serde(skip)]
    pub permissions: FunctionPermissions,
}

/// What a function may do on AWS, as its template defines its role.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FunctionPermissions {
    /// The role's name: SAM's generated `<LogicalId>Role`, the template
    /// role's `RoleName` (else its logical id), or the name in a `Role` ARN.
    pub role_name: String,
    /// The role's policies, in template order.
    pub policies: Vec<PolicyEntry>,
    /// `Role` names a role that is not in the template (or a raw
    /// `AWS::Lambda::Function` has none): its permissions are unknown.
    pub external_role: Option<String>,
}

/// One policy of a function's role, resolved (table and bucket names are
/// the local ones).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PolicyEntry {
    /// An AWS managed policy, by name or ARN (`AmazonS3ReadOnlyAccess`).
    Managed {
        /// Name or ARN.
        name: String,
    },
    /// A SAM policy template (`DynamoDBCrudPolicy: {TableName: t}`).
    Template {
        /// Template name.
        name: String,
        /// Its parameters.
        parameters: BTreeMap<String, String>,
    },
    /// A policy document (inline statements, a template role's policy, an
    /// `AWS::IAM::ManagedPolicy` or `AWS::IAM::Policy` of the template).
    Document {
        /// Where it comes from (`inline policy 2`, `role AppRole policy readers`).
        name: String,
        /// `{Version, Statement}`.
        document: serde_json::Value,
    },
}

/// Where a function's code is.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FunctionCode {
    /// A local directory or zip file (`CodeUri`), absolute.
    Zip {
        /// Absolute path.
        code_uri: PathBuf,
    },
    /// Code in S3 (`s3://…` or `{Bucket, Key}`), not available offline.
    S3 {
        /// `s3://bucket/key`.
        uri: String,
    },
    /// `InlineCode`.
    Inline {
        /// The source text.
        code: String,
    },
    /// `PackageType: Image`.
    Image {
        /// `ImageUri`, when given.
        image_uri: Option<String>,
        /// `Metadata.Dockerfile`.
        dockerfile: Option<String>,
        /// `Metadata.DockerContext`, absolute.
        docker_context: Option<PathBuf>,
        /// `Metadata.DockerTag` (default `latest` when building).
        docker_tag: Option<String>,
        /// `ImageConfig.EntryPoint`.
        entry_point: Vec<String>,
        /// `ImageConfig.Command`.
        command: Vec<String>,
        /// `ImageConfig.WorkingDirectory`.
        working_directory: Option<String>,
    },
}

/// A layer a function uses.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FunctionLayer {
    /// The layer version ARN.
    pub arn: String,
    /// Logical id of the template layer it points at; `None` for a remote layer.
    pub layer: Option<String>,
}

/// `FunctionUrlConfig`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FunctionUrl {
    /// `NONE` or `AWS_IAM`.
    pub auth_type: String,
    /// `BUFFERED` or `RESPONSE_STREAM`.
    pub invoke_mode: String,
    /// `Cors`, normalised.
    pub cors: Option<Cors>,
}

/// One entry of a function's `Events`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Event logical id (the key under `Events`).
    pub name: String,
    /// `Type` (`Api`, `HttpApi`, `S3`, `SQS`, `Schedule`…).
    #[serde(rename = "type")]
    pub kind: String,
    /// `Properties`, resolved.
    pub properties: serde_json::Value,
}

/// REST (API Gateway v1) or HTTP (v2) API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ApiKind {
    /// `AWS::Serverless::Api`, `Api` events, payload v1.
    Rest,
    /// `AWS::Serverless::HttpApi`, `HttpApi` events.
    Http,
}

/// An API and its stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Api {
    /// Logical id (`ServerlessRestApi` / `ServerlessHttpApi` when implicit).
    pub logical_id: String,
    /// REST or HTTP.
    pub kind: ApiKind,
    /// Created by SAM for events without `RestApiId` / `ApiId`.
    pub implicit: bool,
    /// Where it was declared.
    pub source: ApiSource,
    /// Nested stack path (`""` for the root template).
    pub stack: String,
    /// A path prefix that must be present and is stripped before route
    /// matching (function URLs: `/lambda-url/<function name>`).
    pub base_path: Option<String>,
    /// For a function URL: the canonical name of its function. Such an API
    /// has kind `Http` here and maps onto the gateway's `ApiKind::FunctionUrl`.
    pub function_url: Option<String>,
    /// `StageName` (REST implicit `Prod`, HTTP default `$default`).
    pub stage_name: String,
    /// `Auth`.
    pub auth: ApiAuth,
    /// `Cors` / `CorsConfiguration`, normalised.
    pub cors: Option<Cors>,
    /// `BinaryMediaTypes` with `~1` decoded to `/`.
    pub binary_media_types: Vec<String>,
    /// `Variables` (REST) / `StageVariables` (HTTP).
    pub stage_variables: BTreeMap<String, String>,
}

/// An API's `Auth`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ApiAuth {
    /// `DefaultAuthorizer`.
    pub default_authorizer: Option<String>,
    /// `ApiKeyRequired` (REST).
    pub api_key_required: bool,
    /// `Authorizers`, in template order.
    pub authorizers: Vec<Authorizer>,
}

/// What kind of authorizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AuthorizerKind {
    /// REST Cognito user pool authorizer (`UserPoolArn`).
    CognitoUserPool,
    /// HTTP API JWT authorizer (`JwtConfiguration`).
    Jwt,
    /// Lambda authorizer receiving one token.
    LambdaToken,
    /// Lambda authorizer receiving the request.
    LambdaRequest,
}

/// One authorizer of an API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Authorizer {
    /// Its name under `Authorizers`.
    pub name: String,
    /// Its kind.
    pub kind: AuthorizerKind,
    /// Logical id of the template function it calls (Lambda authorizers).
    pub function: Option<String>,
    /// Canonical name of that function (`Function::name`).
    pub function_name: Option<String>,
    /// `FunctionArn` as resolved.
    pub function_arn: Option<String>,
    /// Identity sources in API Gateway notation
    /// (`method.request.header.Authorization`, `$request.header.Authorization`).
    pub identity_sources: Vec<String>,
    /// `Identity.ValidationExpression` (REST TOKEN / Cognito).
    pub validation_expression: Option<String>,
    /// Result cache TTL in seconds (`ReauthorizeEvery`).
    pub ttl_seconds: u32,
    /// `UserPoolArn` (Cognito), always a list.
    pub user_pool_arns: Vec<String>,
    /// JWT `issuer`.
    pub jwt_issuer: Option<String>,
    /// JWT `audience`.
    pub jwt_audience: Vec<String>,
    /// `AuthorizationScopes`.
    pub authorization_scopes: Vec<String>,
    /// `AuthorizerPayloadFormatVersion` (HTTP Lambda authorizers).
    pub payload_format_version: Option<String>,
    /// `EnableSimpleResponses` (HTTP Lambda authorizers).
    pub enable_simple_responses: bool,
}

/// CORS settings, one shape for REST `Cors` and HTTP `CorsConfiguration`.
/// REST values lose their single quotes and are split at commas.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Cors {
    /// Allowed origins.
    pub allow_origins: Vec<String>,
    /// Allowed methods.
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    pub allow_headers: Vec<String>,
    /// Exposed response headers.
    pub expose_headers: Vec<String>,
    /// `AllowCredentials`.
    pub allow_credentials: bool,
    /// `MaxAge` in seconds.
    pub max_age: Option<u64>,
}

/// One route: an API, method and path bound to a function.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Route {
    /// Upper-case method or `ANY`.
    pub method: String,
    /// Path template (`/items/{id}`, `/{proxy+}`) or `$default`.
    pub path: String,
    /// Logical id of the API.
    pub api: String,
    /// REST or HTTP.
    pub api_kind: ApiKind,
    /// The API's stage.
    pub stage: String,
    /// Authorization for this route.
    pub auth: RouteAuth,
    /// HTTP API payload format (`2.0` default, or `1.0`); `None` for REST.
    pub payload_format_version: Option<String>,
    /// Logical id of the function.
    pub function: String,
    /// The function's name.
    pub function_name: String,
    /// The event's name under `Events` (empty for body / CloudFormation routes).
    pub event: String,
    /// What answers this route.
    pub target: RouteTarget,
    /// Where the route was declared.
    pub source: RouteSource,
    /// Nested stack path of the API (`""` for the root template).
    pub stack: String,
}

/// What answers a route; maps one to one onto the gateway's `RouteTarget`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RouteTarget {
    /// The function with this canonical name (`Function::name`).
    Function {
        /// Canonical function name.
        name: String,
    },
    /// Nothing ESB can run: answer `status` with `{"message": message}`.
    Unavailable {
        /// HTTP status (500).
        status: u16,
        /// The body's message (`Internal server error`, or the integration
        /// type ESB does not run).
        message: String,
    },
}

/// Where an API or route was declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// A SAM `Api` / `HttpApi` event.
    Event,
    /// An OpenAPI document (`DefinitionBody`, `DefinitionUri`, `Body`,
    /// `BodyS3Location`).
    Body,
    /// Raw CloudFormation (`AWS::ApiGateway::Method`, `AWS::ApiGatewayV2::Route`,
    /// quick create `Target`).
    Cloudformation,
    /// A Lambda function URL.
    FunctionUrl,
}

/// Where an API was declared.
pub type ApiSource = RouteSource;

/// A route's effective authorization.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteAuth {
    /// Authorizer name, `AWS_IAM`, or `NONE`.
    pub authorizer: String,
    /// An API key is required.
    pub api_key_required: bool,
    /// `AuthorizationScopes`.
    pub authorization_scopes: Vec<String>,
}

/// A DynamoDB table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Table {
    /// Logical id.
    pub logical_id: String,
    /// `TableName`, else the logical id.
    pub name: String,
    /// `AWS::Serverless::SimpleTable` or `AWS::DynamoDB::Table`.
    pub resource_type: String,
    /// Key schema (HASH first).
    pub key_schema: Vec<KeyElement>,
    /// Attribute definitions.
    pub attribute_definitions: Vec<AttributeDefinition>,
    /// Global secondary indexes.
    pub global_secondary_indexes: Vec<SecondaryIndex>,
    /// Local secondary indexes.
    pub local_secondary_indexes: Vec<SecondaryIndex>,
    /// `BillingMode` (CloudFormation's `PROVISIONED` when absent; a
    /// SimpleTable is `PAY_PER_REQUEST` unless it sets `ProvisionedThroughput`).
    pub billing_mode: String,
    /// `StreamSpecification.StreamViewType`.
    pub stream_view_type: Option<String>,
    /// `TimeToLiveSpecification.AttributeName` when enabled.
    pub ttl_attribute: Option<String>,
}

/// One key element.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyElement {
    /// Attribute name.
    pub attribute_name: String,
    /// `HASH` or `RANGE`.
    pub key_type: String,
}

/// One attribute definition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttributeDefinition {
    /// Attribute name.
    pub attribute_name: String,
    /// `S`, `N` or `B`.
    pub attribute_type: String,
}

/// A GSI or LSI.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SecondaryIndex {
    /// `IndexName`.
    pub index_name: String,
    /// Its key schema.
    pub key_schema: Vec<KeyElement>,
    /// `Projection.ProjectionType` (`ALL` when absent).
    pub projection_type: String,
    /// `Projection.NonKeyAttributes`.
    pub non_key_attributes: Vec<String>,
}

/// An S3 bucket.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket {
    /// Logical id.
    pub logical_id: String,
    /// `BucketName`, else `<stack>-<logical id>` lower-cased.
    pub name: String,
    /// Lambda notifications: the bucket's own `LambdaConfigurations` and
    /// functions' `S3` events.
    pub notifications: Vec<BucketNotification>,
}

/// One S3 → Lambda notification.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BucketNotification {
    /// Event names (`s3:ObjectCreated:*`…).
    pub events: Vec<String>,
    /// Logical id of the template function, when it is one.
    pub function: Option<String>,
    /// The function ARN as resolved.
    pub function_arn: String,
    /// Key prefix filter.
    pub prefix: Option<String>,
    /// Key suffix filter.
    pub suffix: Option<String>,
}

/// An `AWS::Serverless::LayerVersion`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Layer {
    /// Logical id.
    pub logical_id: String,
    /// `LayerName`, else the logical id.
    pub name: String,
    /// The ARN `!Ref` gives.
    pub arn: String,
    /// `ContentUri`: a local path (absolute) or an S3 URI.
    pub content: Option<FunctionCode>,
    /// `CompatibleRuntimes`.
    pub compatible_runtimes: Vec<String>,
}

/// A scheduled invocation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schedule {
    /// Logical id of the function.
    pub function: String,
    /// The event's name (for a resource: its `Name`, else its logical id).
    pub event: String,
    /// `Schedule` (EventBridge rule) or `ScheduleV2` (Scheduler).
    #[serde(rename = "type")]
    pub kind: String,
    /// `rate(...)`, `cron(...)` or `at(...)`.
    pub expression: String,
    /// `ScheduleExpressionTimezone`.
    pub timezone: Option<String>,
    /// `Input`.
    pub input: Option<String>,
    /// A rule target's `InputPath` (`AWS::Events::Rule` resources only).
    pub input_path: Option<String>,
    /// `Enabled` / `State` (default enabled).
    pub enabled: bool,
}

/// A resource ESB keeps but does not model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OtherResource {
    /// Logical id.
    pub logical_id: String,
    /// `Type`.
    pub resource_type: String,
}
