//! SAM policy templates (`Policies: - DynamoDBCrudPolicy: {TableName: t}`)
//! expanded to the statements SAM generates for them (AWS's
//! `policy_templates.json`, written here as data: actions and resource
//! patterns with `${AWS::Partition}`, `${AWS::Region}`,
//! `${AWS::AccountId}` and `${Parameter}` placeholders).
//!
//! Only the templates for the services ESB serves or commonly sees next to
//! them are listed; an unknown template name is a warning (its permissions
//! are not evaluated, so in `enforce` mode what it would grant is denied).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::ArnContext;

/// One statement of a template: actions, resource patterns.
type TemplateStatement = (&'static [&'static str], &'static [&'static str]);

/// A SAM policy template.
struct Template {
    name: &'static str,
    params: &'static [&'static str],
    statements: &'static [TemplateStatement],
}

const TABLE: &str =
    "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${TableName}";
const TABLE_INDEXES: &str =
    "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${TableName}/index/*";
const BUCKET: &str = "arn:${AWS::Partition}:s3:::${BucketName}";
const OBJECTS: &str = "arn:${AWS::Partition}:s3:::${BucketName}/*";
const QUEUE: &str = "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${QueueName}";

const TEMPLATES: &[Template] = &[
    Template {
        name: "DynamoDBCrudPolicy",
        params: &["TableName"],
        statements: &[(
            &[
                "dynamodb:GetItem",
                "dynamodb:DeleteItem",
                "dynamodb:PutItem",
                "dynamodb:Scan",
                "dynamodb:Query",
                "dynamodb:UpdateItem",
                "dynamodb:BatchWriteItem",
                "dynamodb:BatchGetItem",
                "dynamodb:DescribeTable",
                "dynamodb:ConditionCheckItem",
            ],
            &[TABLE, TABLE_INDEXES],
        )],
    },
    Template {
        name: "DynamoDBReadPolicy",
        params: &["TableName"],
        statements: &[(
            &[
                "dynamodb:GetItem",
                "dynamodb:Scan",
                "dynamodb:Query",
                "dynamodb:BatchGetItem",
                "dynamodb:DescribeTable",
            ],
            &[TABLE, TABLE_INDEXES],
        )],
    },
    Template {
        name: "DynamoDBWritePolicy",
        params: &["TableName"],
        statements: &[(
            &[
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:BatchWriteItem",
            ],
            &[TABLE, TABLE_INDEXES],
        )],
    },
    Template {
        name: "DynamoDBReconfigurePolicy",
        params: &["TableName"],
        statements: &[(&["dynamodb:UpdateTable"], &[TABLE])],
    },
    Template {
        name: "DynamoDBStreamReadPolicy",
        params: &["TableName", "StreamName"],
        statements: &[
            (
                &[
                    "dynamodb:DescribeStream",
                    "dynamodb:GetRecords",
                    "dynamodb:GetShardIterator",
                ],
                &[
                    "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${TableName}/stream/${StreamName}",
                ],
            ),
            (
                &["dynamodb:ListStreams"],
                &[
                    "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${TableName}/stream/*",
                ],
            ),
        ],
    },
    Template {
        name: "S3ReadPolicy",
        params: &["BucketName"],
        statements: &[(
            &[
                "s3:GetObject",
                "s3:ListBucket",
                "s3:GetBucketLocation",
                "s3:GetObjectVersion",
                "s3:GetLifecycleConfiguration",
            ],
            &[BUCKET, OBJECTS],
        )],
    },
    Template {
        name: "S3WritePolicy",
        params: &["BucketName"],
        statements: &[(
            &[
                "s3:PutObject",
                "s3:PutObjectAcl",
                "s3:PutLifecycleConfiguration",
            ],
            &[BUCKET, OBJECTS],
        )],
    },
    Template {
        name: "S3CrudPolicy",
        params: &["BucketName"],
        statements: &[(
            &[
                "s3:GetObject",
                "s3:ListBucket",
                "s3:GetBucketLocation",
                "s3:GetObjectVersion",
                "s3:PutObject",
                "s3:PutObjectAcl",
                "s3:GetLifecycleConfiguration",
                "s3:PutLifecycleConfiguration",
                "s3:DeleteObject",
            ],
            &[BUCKET, OBJECTS],
        )],
    },
    Template {
        name: "S3FullAccessPolicy",
        params: &["BucketName"],
        statements: &[
            (
                &[
                    "s3:GetObject",
                    "s3:GetObjectAcl",
                    "s3:GetObjectVersion",
                    "s3:PutObject",
                    "s3:PutObjectAcl",
                    "s3:DeleteObject",
                    "s3:DeleteObjectTagging",
                    "s3:DeleteObjectVersionTagging",
                    "s3:GetObjectTagging",
                    "s3:GetObjectVersionTagging",
                    "s3:PutObjectTagging",
                    "s3:PutObjectVersionTagging",
                ],
                &[OBJECTS],
            ),
            (
                &[
                    "s3:ListBucket",
                    "s3:GetBucketLocation",
                    "s3:GetLifecycleConfiguration",
                    "s3:PutLifecycleConfiguration",
                ],
                &[BUCKET],
            ),
        ],
    },
    Template {
        name: "SQSSendMessagePolicy",
        params: &["QueueName"],
        statements: &[(&["sqs:SendMessage*"], &[QUEUE])],
    },
    Template {
        name: "SQSPollerPolicy",
        params: &["QueueName"],
        statements: &[(
            &[
                "sqs:ChangeMessageVisibility",
                "sqs:ChangeMessageVisibilityBatch",
                "sqs:DeleteMessage",
                "sqs:DeleteMessageBatch",
                "sqs:GetQueueAttributes",
                "sqs:ReceiveMessage",
            ],
            &[QUEUE],
        )],
    },
    Template {
        name: "LambdaInvokePolicy",
        params: &["FunctionName"],
        statements: &[(
            &["lambda:InvokeFunction"],
            &[
                "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:${FunctionName}*",
            ],
        )],
    },
    Template {
        name: "SNSPublishMessagePolicy",
        params: &["TopicName"],
        statements: &[(
            &["sns:Publish"],
            &["arn:${AWS::Partition}:sns:${AWS::Region}:${AWS::AccountId}:${TopicName}"],
        )],
    },
    Template {
        name: "SNSCrudPolicy",
        params: &["TopicName"],
        statements: &[(
            &[
                "sns:ListSubscriptionsByTopic",
                "sns:CreateTopic",
                "sns:SetTopicAttributes",
                "sns:Subscribe",
                "sns:Publish",
            ],
            &["arn:${AWS::Partition}:sns:${AWS::Region}:${AWS::AccountId}:${TopicName}*"],
        )],
    },
    Template {
        name: "CloudWatchPutMetricPolicy",
        params: &[],
        statements: &[(&["cloudwatch:PutMetricData"], &["*"])],
    },
    Template {
        name: "KMSDecryptPolicy",
        params: &["KeyId"],
        statements: &[(
            &["kms:Decrypt"],
            &["arn:${AWS::Partition}:kms:${AWS::Region}:${AWS::AccountId}:key/${KeyId}"],
        )],
    },
    Template {
        name: "SSMParameterReadPolicy",
        params: &["ParameterName"],
        statements: &[
            (&["ssm:DescribeParameters"], &["*"]),
            (
                &[
                    "ssm:GetParameters",
                    "ssm:GetParameter",
                    "ssm:GetParametersByPath",
                ],
                &[
                    "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/${ParameterName}",
                ],
            ),
        ],
    },
    Template {
        name: "AWSSecretsManagerGetSecretValuePolicy",
        params: &["SecretArn"],
        statements: &[(&["secretsmanager:GetSecretValue"], &["${SecretArn}"])],
    },
    Template {
        name: "StepFunctionsExecutionPolicy",
        params: &["StateMachineName"],
        statements: &[(
            &["states:StartExecution"],
            &[
                "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:${StateMachineName}",
            ],
        )],
    },
    Template {
        name: "VPCAccessPolicy",
        params: &[],
        statements: &[(
            &[
                "ec2:CreateNetworkInterface",
                "ec2:DeleteNetworkInterface",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DetachNetworkInterface",
            ],
            &["*"],
        )],
    },
];

/// Why a template cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Not a template ESB knows.
    #[error("SAM policy template {0} is not known to ESB; its permissions are not evaluated")]
    Unknown(String),
    /// A parameter the template needs is missing.
    #[error("SAM policy template {template} needs the parameter {parameter}")]
    MissingParameter {
        /// Template name.
        template: String,
        /// Parameter name.
        parameter: String,
    },
}

/// Whether `name` is a SAM policy template ESB knows.
pub fn is_known(name: &str) -> bool {
    TEMPLATES.iter().any(|t| t.name == name)
}

/// The policy document SAM generates for template `name` with
/// `parameters`, in `ctx`'s partition, region and account.
pub fn expand(
    name: &str,
    parameters: &BTreeMap<String, String>,
    ctx: &ArnContext,
) -> Result<Value, TemplateError> {
    let t = TEMPLATES
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| TemplateError::Unknown(name.to_string()))?;
    for p in t.params {
        if !parameters.contains_key(*p) {
            return Err(TemplateError::MissingParameter {
                template: name.to_string(),
                parameter: (*p).to_string(),
            });
        }
    }
    let statements: Vec<Value> = t
        .statements
        .iter()
        .map(|(actions, resources)| {
            let resources: Vec<String> = resources
                .iter()
                .map(|r| substitute(r, parameters, ctx))
                .collect();
            json!({"Effect": "Allow", "Action": actions, "Resource": resources})
        })
        .collect();
    Ok(json!({"Statement": statements}))
}

/// The templates tried, in order, when suggesting what a denied call needs:
/// the narrowest first. (template, parameter, which resource names it).
const SUGGESTIONS: &[(&str, &str)] = &[
    ("DynamoDBReadPolicy", "TableName"),
    ("DynamoDBWritePolicy", "TableName"),
    ("DynamoDBCrudPolicy", "TableName"),
    ("S3ReadPolicy", "BucketName"),
    ("S3WritePolicy", "BucketName"),
    ("S3CrudPolicy", "BucketName"),
    ("S3FullAccessPolicy", "BucketName"),
    ("LambdaInvokePolicy", "FunctionName"),
    ("SQSSendMessagePolicy", "QueueName"),
    ("SQSPollerPolicy", "QueueName"),
];

/// A SAM policy template entry that would allow `action` on `resource`
/// (`DynamoDBWritePolicy: {TableName: orders}`), if one of the common ones
/// does.
pub fn suggest(action: &str, resource: &str, ctx: &ArnContext) -> Option<String> {
    let name = resource_name(resource)?;
    for (template, param) in SUGGESTIONS {
        let params = BTreeMap::from([(param.to_string(), name.to_string())]);
        let Ok(doc) = expand(template, &params, ctx) else {
            continue;
        };
        let mut warnings = Vec::new();
        let statements = crate::policy::parse_document(&doc, template, &mut warnings);
        if crate::policy::evaluate(&statements, action, resource) == crate::policy::Decision::Allow
        {
            return Some(format!("{template}: {{{param}: {name}}}"));
        }
    }
    None
}

/// The table, bucket, function or queue name in an ARN.
fn resource_name(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (_, _, service, _, _, rest) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let name = match service {
        "dynamodb" => rest.strip_prefix("table/")?.split('/').next()?,
        "s3" => rest.split('/').next()?,
        "lambda" => rest.strip_prefix("function:")?.split(':').next()?,
        "sqs" => rest,
        _ => return None,
    };
    (!name.is_empty()).then_some(name)
}

/// Replaces `${AWS::Partition}`, `${AWS::Region}`, `${AWS::AccountId}` and
/// `${Param}`; anything else stays as written.
fn substitute(text: &str, parameters: &BTreeMap<String, String>, ctx: &ArnContext) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = &after[..end];
        match key {
            "AWS::Partition" => out.push_str(&ctx.partition),
            "AWS::Region" => out.push_str(&ctx.region),
            "AWS::AccountId" => out.push_str(&ctx.account_id),
            k => match parameters.get(k) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("${");
                    out.push_str(k);
                    out.push('}');
                }
            },
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Decision, evaluate, parse_document};

    fn ctx() -> ArnContext {
        ArnContext::new("us-east-1", "123456789012")
    }

    fn statements(name: &str, param: &str, value: &str) -> Vec<crate::policy::Statement> {
        let doc = expand(
            name,
            &BTreeMap::from([(param.to_string(), value.to_string())]),
            &ctx(),
        )
        .unwrap();
        let mut w = Vec::new();
        let s = parse_document(&doc, name, &mut w);
        assert!(w.is_empty(), "{w:?}");
        s
    }

    #[test]
    fn dynamodb_read_write_crud() {
        let t = "arn:aws:dynamodb:us-east-1:123456789012:table/orders";
        let idx = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/index/byDate";
        let read = statements("DynamoDBReadPolicy", "TableName", "orders");
        assert_eq!(evaluate(&read, "dynamodb:GetItem", t), Decision::Allow);
        assert_eq!(evaluate(&read, "dynamodb:Query", idx), Decision::Allow);
        assert_eq!(
            evaluate(&read, "dynamodb:PutItem", t),
            Decision::ImplicitDeny
        );
        assert_eq!(
            evaluate(
                &read,
                "dynamodb:GetItem",
                "arn:aws:dynamodb:us-east-1:123456789012:table/other"
            ),
            Decision::ImplicitDeny
        );
        let write = statements("DynamoDBWritePolicy", "TableName", "orders");
        assert_eq!(evaluate(&write, "dynamodb:PutItem", t), Decision::Allow);
        assert_eq!(
            evaluate(&write, "dynamodb:GetItem", t),
            Decision::ImplicitDeny
        );
        assert_eq!(
            evaluate(&write, "dynamodb:DeleteItem", t),
            Decision::ImplicitDeny
        );
        let crud = statements("DynamoDBCrudPolicy", "TableName", "orders");
        for a in [
            "GetItem",
            "PutItem",
            "DeleteItem",
            "UpdateItem",
            "Query",
            "Scan",
            "BatchWriteItem",
            "ConditionCheckItem",
        ] {
            assert_eq!(
                evaluate(&crud, &format!("dynamodb:{a}"), t),
                Decision::Allow,
                "{a}"
            );
        }
        assert_eq!(
            evaluate(&crud, "dynamodb:DeleteTable", t),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn s3_read_write_crud_full() {
        let b = "arn:aws:s3:::photos";
        let o = "arn:aws:s3:::photos/a/b.jpg";
        let read = statements("S3ReadPolicy", "BucketName", "photos");
        assert_eq!(evaluate(&read, "s3:GetObject", o), Decision::Allow);
        assert_eq!(evaluate(&read, "s3:ListBucket", b), Decision::Allow);
        assert_eq!(evaluate(&read, "s3:PutObject", o), Decision::ImplicitDeny);
        let write = statements("S3WritePolicy", "BucketName", "photos");
        assert_eq!(evaluate(&write, "s3:PutObject", o), Decision::Allow);
        assert_eq!(evaluate(&write, "s3:GetObject", o), Decision::ImplicitDeny);
        let crud = statements("S3CrudPolicy", "BucketName", "photos");
        assert_eq!(evaluate(&crud, "s3:DeleteObject", o), Decision::Allow);
        assert_eq!(
            evaluate(&crud, "s3:DeleteObjectTagging", o),
            Decision::ImplicitDeny
        );
        let full = statements("S3FullAccessPolicy", "BucketName", "photos");
        assert_eq!(
            evaluate(&full, "s3:DeleteObjectTagging", o),
            Decision::Allow
        );
        assert_eq!(evaluate(&full, "s3:ListBucket", b), Decision::Allow);
        assert_eq!(evaluate(&full, "s3:ListBucket", o), Decision::ImplicitDeny);
        assert_eq!(
            evaluate(&full, "s3:GetObject", "arn:aws:s3:::photos2/x"),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn sqs_lambda_and_partition() {
        let q = "arn:aws:sqs:us-east-1:123456789012:jobs";
        let send = statements("SQSSendMessagePolicy", "QueueName", "jobs");
        assert_eq!(evaluate(&send, "sqs:SendMessageBatch", q), Decision::Allow);
        assert_eq!(
            evaluate(&send, "sqs:ReceiveMessage", q),
            Decision::ImplicitDeny
        );
        let poll = statements("SQSPollerPolicy", "QueueName", "jobs");
        assert_eq!(evaluate(&poll, "sqs:ReceiveMessage", q), Decision::Allow);
        let invoke = statements("LambdaInvokePolicy", "FunctionName", "worker");
        let f = "arn:aws:lambda:us-east-1:123456789012:function:worker";
        assert_eq!(
            evaluate(&invoke, "lambda:InvokeFunction", f),
            Decision::Allow
        );
        assert_eq!(
            evaluate(&invoke, "lambda:InvokeFunction", &format!("{f}:live")),
            Decision::Allow
        );
        assert_eq!(
            evaluate(&invoke, "lambda:GetFunction", f),
            Decision::ImplicitDeny
        );
        let cn = expand(
            "S3ReadPolicy",
            &BTreeMap::from([("BucketName".to_string(), "b".to_string())]),
            &ArnContext::new("cn-north-1", "123456789012"),
        )
        .unwrap();
        assert!(cn.to_string().contains("arn:aws-cn:s3:::b"), "{cn}");
    }

    #[test]
    fn unknown_templates_and_missing_parameters_are_errors() {
        assert!(matches!(
            expand("NoSuchPolicy", &BTreeMap::new(), &ctx()),
            Err(TemplateError::Unknown(_))
        ));
        let err = expand("DynamoDBCrudPolicy", &BTreeMap::new(), &ctx()).unwrap_err();
        assert!(err.to_string().contains("TableName"), "{err}");
        assert!(expand("CloudWatchPutMetricPolicy", &BTreeMap::new(), &ctx()).is_ok());
        assert!(is_known("S3CrudPolicy") && !is_known("S3CrudPolicyX"));
    }

    #[test]
    fn suggestions_name_the_narrowest_template() {
        let c = ctx();
        assert_eq!(
            suggest(
                "dynamodb:PutItem",
                "arn:aws:dynamodb:us-east-1:123456789012:table/orders",
                &c
            )
            .as_deref(),
            Some("DynamoDBWritePolicy: {TableName: orders}")
        );
        assert_eq!(
            suggest(
                "dynamodb:DeleteItem",
                "arn:aws:dynamodb:us-east-1:123456789012:table/orders",
                &c
            )
            .as_deref(),
            Some("DynamoDBCrudPolicy: {TableName: orders}")
        );
        assert_eq!(
            suggest("s3:GetObject", "arn:aws:s3:::photos/k", &c).as_deref(),
            Some("S3ReadPolicy: {BucketName: photos}")
        );
        assert_eq!(
            suggest(
                "lambda:InvokeFunction",
                "arn:aws:lambda:us-east-1:123456789012:function:w",
                &c
            )
            .as_deref(),
            Some("LambdaInvokePolicy: {FunctionName: w}")
        );
        assert_eq!(
            suggest(
                "dynamodb:DeleteTable",
                "arn:aws:dynamodb:us-east-1:123456789012:table/orders",
                &c
            ),
            None
        );
        assert_eq!(suggest("s3:ListAllMyBuckets", "*", &c), None);
    }
}
