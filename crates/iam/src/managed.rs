//! AWS managed policies ESB knows, by name (`AmazonS3ReadOnlyAccess`) or
//! ARN (`arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess`,
//! `arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole`),
//! reduced to the statements that matter for the services ESB serves (S3,
//! DynamoDB, Lambda, SQS, SNS, CloudWatch Logs). AWS's documents grant more
//! (for example `AmazonDynamoDBFullAccess` also covers Application Auto
//! Scaling and CloudWatch alarms); those extra services are never called
//! locally, so leaving them out changes no decision ESB makes.

use serde_json::{Value, json};

/// (name, statements as (actions, resources)).
type Managed = (
    &'static str,
    &'static [(&'static [&'static str], &'static [&'static str])],
);

const ALL: &[&str] = &["*"];

const MANAGED: &[Managed] = &[
    ("AdministratorAccess", &[(&["*"], ALL)]),
    (
        "AmazonS3FullAccess",
        &[(&["s3:*", "s3-object-lambda:*"], ALL)],
    ),
    (
        "AmazonS3ReadOnlyAccess",
        &[(
            &[
                "s3:Get*",
                "s3:List*",
                "s3:Describe*",
                "s3-object-lambda:Get*",
                "s3-object-lambda:List*",
            ],
            ALL,
        )],
    ),
    (
        "AmazonDynamoDBFullAccess",
        &[(&["dynamodb:*", "dax:*"], ALL)],
    ),
    (
        "AmazonDynamoDBReadOnlyAccess",
        &[(
            &[
                "dynamodb:BatchGetItem",
                "dynamodb:ConditionCheckItem",
                "dynamodb:Describe*",
                "dynamodb:Get*",
                "dynamodb:List*",
                "dynamodb:PartiQLSelect",
                "dynamodb:Query",
                "dynamodb:Scan",
            ],
            ALL,
        )],
    ),
    (
        "AWSLambdaBasicExecutionRole",
        &[(
            &[
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
            ],
            ALL,
        )],
    ),
    (
        "AWSLambdaExecute",
        &[
            (&["logs:*"], &["arn:aws:logs:*:*:*"]),
            (&["s3:GetObject", "s3:PutObject"], &["arn:aws:s3:::*"]),
        ],
    ),
    ("AWSLambdaRole", &[(&["lambda:InvokeFunction"], ALL)]),
    ("AWSLambda_FullAccess", &[(&["lambda:*"], ALL)]),
    ("AWSLambdaFullAccess", &[(&["lambda:*"], ALL)]),
    (
        "AWSLambda_ReadOnlyAccess",
        &[(&["lambda:Get*", "lambda:List*"], ALL)],
    ),
    (
        "AWSLambdaDynamoDBExecutionRole",
        &[(
            &[
                "dynamodb:DescribeStream",
                "dynamodb:GetRecords",
                "dynamodb:GetShardIterator",
                "dynamodb:ListStreams",
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
            ],
            ALL,
        )],
    ),
    (
        "AWSLambdaSQSQueueExecutionRole",
        &[(
            &[
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
            ],
            ALL,
        )],
    ),
    ("AmazonSQSFullAccess", &[(&["sqs:*"], ALL)]),
    (
        "AmazonSQSReadOnlyAccess",
        &[(
            &[
                "sqs:GetQueueAttributes",
                "sqs:GetQueueUrl",
                "sqs:ListDeadLetterSourceQueues",
                "sqs:ListQueues",
                "sqs:ListMessageMoveTasks",
                "sqs:ListQueueTags",
            ],
            ALL,
        )],
    ),
    ("AmazonSNSFullAccess", &[(&["sns:*"], ALL)]),
    ("CloudWatchLogsFullAccess", &[(&["logs:*"], ALL)]),
    (
        "AWSXrayWriteOnlyAccess",
        &[(
            &[
                "xray:PutTraceSegments",
                "xray:PutTelemetryRecords",
                "xray:GetSamplingRules",
                "xray:GetSamplingTargets",
                "xray:GetSamplingStatisticSummaries",
            ],
            ALL,
        )],
    ),
];

/// The policy name in a managed policy ARN (`arn:aws:iam::aws:policy/
/// service-role/AWSLambdaRole` → `AWSLambdaRole`), or the name itself.
/// `None` for an ARN of a customer managed policy (another account than
/// `aws`).
pub fn managed_name(name_or_arn: &str) -> Option<&str> {
    match name_or_arn.strip_prefix("arn:") {
        None => Some(name_or_arn),
        Some(rest) => {
            // partition:iam::aws:policy/path/Name
            let mut parts = rest.splitn(5, ':');
            let (_partition, service, _region, account, resource) = (
                parts.next()?,
                parts.next()?,
                parts.next()?,
                parts.next()?,
                parts.next()?,
            );
            if service != "iam" || account != "aws" {
                return None;
            }
            let path = resource.strip_prefix("policy/")?;
            path.rsplit('/').next()
        }
    }
}

/// The policy document of a managed policy ESB knows.
pub fn document(name_or_arn: &str) -> Option<Value> {
    let name = managed_name(name_or_arn)?;
    let (_, statements) = MANAGED.iter().find(|(n, _)| *n == name)?;
    let statements: Vec<Value> = statements
        .iter()
        .map(|(actions, resources)| {
            json!({"Effect": "Allow", "Action": actions, "Resource": resources})
        })
        .collect();
    Some(json!({"Statement": statements}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Decision, evaluate, parse_document};

    fn eval(name: &str, action: &str, resource: &str) -> Decision {
        let doc = document(name).unwrap_or_else(|| panic!("{name} unknown"));
        let mut w = Vec::new();
        let s = parse_document(&doc, name, &mut w);
        assert!(w.is_empty());
        evaluate(&s, action, resource)
    }

    #[test]
    fn names_and_arns() {
        assert_eq!(
            managed_name("AmazonS3FullAccess"),
            Some("AmazonS3FullAccess")
        );
        assert_eq!(
            managed_name("arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"),
            Some("AWSLambdaBasicExecutionRole")
        );
        assert_eq!(
            managed_name("arn:aws-cn:iam::aws:policy/AmazonS3ReadOnlyAccess"),
            Some("AmazonS3ReadOnlyAccess")
        );
        assert_eq!(managed_name("arn:aws:iam::123456789012:policy/Mine"), None);
        assert!(document("arn:aws:iam::aws:policy/service-role/AWSLambdaRole").is_some());
        assert!(document("NoSuchManagedPolicy").is_none());
    }

    #[test]
    fn what_they_allow() {
        let o = "arn:aws:s3:::b/k";
        let t = "arn:aws:dynamodb:us-east-1:123456789012:table/t";
        assert_eq!(
            eval("AmazonS3FullAccess", "s3:PutObject", o),
            Decision::Allow
        );
        assert_eq!(
            eval("AmazonS3ReadOnlyAccess", "s3:GetObject", o),
            Decision::Allow
        );
        assert_eq!(
            eval("AmazonS3ReadOnlyAccess", "s3:PutObject", o),
            Decision::ImplicitDeny
        );
        assert_eq!(
            eval("AmazonDynamoDBFullAccess", "dynamodb:DeleteTable", t),
            Decision::Allow
        );
        assert_eq!(
            eval("AmazonDynamoDBReadOnlyAccess", "dynamodb:Query", t),
            Decision::Allow
        );
        assert_eq!(
            eval("AmazonDynamoDBReadOnlyAccess", "dynamodb:DescribeTable", t),
            Decision::Allow
        );
        assert_eq!(
            eval("AmazonDynamoDBReadOnlyAccess", "dynamodb:PutItem", t),
            Decision::ImplicitDeny
        );
        let f = "arn:aws:lambda:us-east-1:123456789012:function:f";
        assert_eq!(
            eval("AWSLambdaRole", "lambda:InvokeFunction", f),
            Decision::Allow
        );
        assert_eq!(
            eval("AWSLambda_FullAccess", "lambda:GetFunction", f),
            Decision::Allow
        );
        assert_eq!(
            eval("AWSLambdaBasicExecutionRole", "lambda:InvokeFunction", f),
            Decision::ImplicitDeny
        );
        assert_eq!(
            eval("AWSLambdaBasicExecutionRole", "logs:PutLogEvents", "*"),
            Decision::Allow
        );
        assert_eq!(
            eval("AdministratorAccess", "s3:DeleteBucket", "arn:aws:s3:::b"),
            Decision::Allow
        );
    }
}
