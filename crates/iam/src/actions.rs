//! Which IAM action and resource ARN a request to ESB's S3, DynamoDB or
//! Invoke API needs, as AWS's service authorization reference defines
//! them: S3 operations map to their action (`HeadObject` needs
//! `s3:GetObject`, `ListObjectsV2` needs `s3:ListBucket` on the bucket),
//! DynamoDB operations to `dynamodb:<Operation>` on each table (index)
//! they name; a transaction needs the item action per item
//! (`TransactWriteItems` with a `Put` needs `dynamodb:PutItem`).

use serde_json::Value;

use crate::ArnContext;

/// One permission a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// `service:Action`.
    pub action: String,
    /// Resource ARN (or `*`).
    pub resource: String,
}

impl Need {
    fn new(action: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            action: action.into(),
            resource: resource.into(),
        }
    }
}

/// The ARN of an S3 bucket, or of an object in it.
pub fn s3_arn(ctx: &ArnContext, bucket: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => format!("arn:{}:s3:::{bucket}/{k}", ctx.partition),
        None => format!("arn:{}:s3:::{bucket}", ctx.partition),
    }
}

/// What an S3 operation (s3s's operation name: `GetObject`, `ListObjectsV2`)
/// on `bucket` / `key` needs. `None` for `DeleteObjects`, which needs
/// `s3:DeleteObject` per key (the caller checks each).
pub fn s3(ctx: &ArnContext, op: &str, bucket: Option<&str>, key: Option<&str>) -> Option<Need> {
    let action = match op {
        "DeleteObjects" => return None,
        "ListBuckets" => {
            return Some(Need::new(
                "s3:ListAllMyBuckets",
                format!("arn:{}:s3:::*", ctx.partition),
            ));
        }
        "ListObjects" | "ListObjectsV2" | "HeadBucket" => "s3:ListBucket",
        "ListObjectVersions" => "s3:ListBucketVersions",
        "ListMultipartUploads" => "s3:ListBucketMultipartUploads",
        "GetBucketLifecycleConfiguration" => "s3:GetLifecycleConfiguration",
        "PutBucketLifecycleConfiguration" | "DeleteBucketLifecycle" => {
            "s3:PutLifecycleConfiguration"
        }
        "DeleteBucketTagging" => "s3:PutBucketTagging",
        "GetBucketNotificationConfiguration" => "s3:GetBucketNotification",
        "PutBucketNotificationConfiguration" => "s3:PutBucketNotification",
        "GetBucketCors" => "s3:GetBucketCORS",
        "PutBucketCors" | "DeleteBucketCors" => "s3:PutBucketCORS",
        "GetBucketEncryption" => "s3:GetEncryptionConfiguration",
        "PutBucketEncryption" | "DeleteBucketEncryption" => "s3:PutEncryptionConfiguration",
        "GetObject" | "HeadObject" | "GetObjectAttributes" | "SelectObjectContent" => {
            "s3:GetObject"
        }
        "PutObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "CompleteMultipartUpload"
        | "CopyObject"
        | "UploadPartCopy" => "s3:PutObject",
        "ListParts" => "s3:ListMultipartUploadParts",
        other => {
            return Some(Need::new(
                format!("s3:{other}"),
                arn_or_all(ctx, bucket, key),
            ));
        }
    };
    Some(Need::new(action, arn_or_all(ctx, bucket, key)))
}

fn arn_or_all(ctx: &ArnContext, bucket: Option<&str>, key: Option<&str>) -> String {
    match bucket {
        Some(b) => s3_arn(ctx, b, key),
        None => "*".to_string(),
    }
}

/// The ARN of a table (or of an index of it). A `TableName` that is
/// already an ARN is used as it is.
pub fn table_arn(ctx: &ArnContext, table: &str, index: Option<&str>) -> String {
    let base = if table.starts_with("arn:") {
        table.to_string()
    } else {
        format!(
            "arn:{}:dynamodb:{}:{}:table/{table}",
            ctx.partition, ctx.region, ctx.account_id
        )
    };
    match index {
        Some(i) => format!("{base}/index/{i}"),
        None => base,
    }
}

/// What a DynamoDB call needs: `op` is the operation of `X-Amz-Target`
/// (`PutItem`), `body` the JSON request. A body that is not JSON needs
/// the action on `*` (DynamoDB refuses it anyway).
pub fn dynamodb(ctx: &ArnContext, op: &str, body: &[u8]) -> Vec<Need> {
    let action = format!("dynamodb:{op}");
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return vec![Need::new(action, "*")];
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let mut needs = Vec::new();
    match op {
        "BatchGetItem" | "BatchWriteItem" => {
            if let Some(Value::Object(items)) = req.get("RequestItems") {
                for table in items.keys() {
                    needs.push(Need::new(&action, table_arn(ctx, table, None)));
                }
            }
        }
        "TransactWriteItems" | "TransactGetItems" => {
            if let Some(Value::Array(items)) = req.get("TransactItems") {
                for item in items {
                    let Value::Object(item) = item else { continue };
                    for (kind, spec) in item {
                        let item_action = match kind.as_str() {
                            "Put" => "dynamodb:PutItem",
                            "Update" => "dynamodb:UpdateItem",
                            "Delete" => "dynamodb:DeleteItem",
                            "ConditionCheck" => "dynamodb:ConditionCheckItem",
                            "Get" => "dynamodb:GetItem",
                            _ => continue,
                        };
                        if let Some(table) = text(spec.get("TableName")) {
                            needs.push(Need::new(item_action, table_arn(ctx, &table, None)));
                        }
                    }
                }
            }
        }
        "ExecuteStatement" => {
            let statement = text(req.get("Statement")).unwrap_or_default();
            let (verb, table) = partiql(&statement);
            let resource = table.map_or_else(|| "*".to_string(), |t| table_arn(ctx, &t, None));
            needs.push(Need::new(format!("dynamodb:PartiQL{verb}"), resource));
        }
        "ListTables" | "DescribeLimits" | "DescribeEndpoints" => {
            needs.push(Need::new(&action, "*"));
        }
        _ => {
            if let Some(table) = text(req.get("TableName")) {
                let index = text(req.get("IndexName"));
                needs.push(Need::new(&action, table_arn(ctx, &table, index.as_deref())));
            } else if let Some(arn) =
                text(req.get("ResourceArn")).or_else(|| text(req.get("StreamArn")))
            {
                needs.push(Need::new(&action, arn));
            }
        }
    }
    if needs.is_empty() {
        needs.push(Need::new(action, "*"));
    }
    needs
}

/// The PartiQL verb (`Select`, `Insert`, `Update`, `Delete`) and the table
/// a statement names, when simple enough to see.
fn partiql(statement: &str) -> (&'static str, Option<String>) {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let first = words
        .first()
        .map(|w| w.to_ascii_uppercase())
        .unwrap_or_default();
    let (verb, after) = match first.as_str() {
        "SELECT" => ("Select", "FROM"),
        "INSERT" => ("Insert", "INTO"),
        "UPDATE" => ("Update", "UPDATE"),
        "DELETE" => ("Delete", "FROM"),
        _ => return ("Select", None),
    };
    let table = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case(after))
        .and_then(|i| words.get(i + 1))
        .map(|t| {
            t.trim_matches(|c| c == '"' || c == '\'')
                .split('.')
                .next()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string()
        })
        .filter(|t| !t.is_empty());
    (verb, table)
}

/// The ARN of a Lambda function (with its qualifier, if any).
pub fn function_arn(ctx: &ArnContext, name: &str, qualifier: Option<&str>) -> String {
    let base = format!(
        "arn:{}:lambda:{}:{}:function:{name}",
        ctx.partition, ctx.region, ctx.account_id
    );
    match qualifier {
        Some(q) => format!("{base}:{q}"),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ArnContext {
        ArnContext::new("us-east-1", "123456789012")
    }

    #[test]
    fn s3_operations_map_to_their_actions() {
        let c = ctx();
        let need = |op, b, k| s3(&c, op, b, k).unwrap();
        assert_eq!(
            need("HeadObject", Some("b"), Some("k/1")),
            Need::new("s3:GetObject", "arn:aws:s3:::b/k/1")
        );
        assert_eq!(
            need("ListObjectsV2", Some("b"), None),
            Need::new("s3:ListBucket", "arn:aws:s3:::b")
        );
        assert_eq!(
            need("UploadPart", Some("b"), Some("k")).action,
            "s3:PutObject"
        );
        assert_eq!(
            need("DeleteObject", Some("b"), Some("k")).action,
            "s3:DeleteObject"
        );
        assert_eq!(
            need("ListBuckets", None, None),
            Need::new("s3:ListAllMyBuckets", "arn:aws:s3:::*")
        );
        assert_eq!(
            need("GetBucketVersioning", Some("b"), None),
            Need::new("s3:GetBucketVersioning", "arn:aws:s3:::b")
        );
        assert!(s3(&c, "DeleteObjects", Some("b"), None).is_none());
    }

    #[test]
    fn dynamodb_operations_name_each_table() {
        let c = ctx();
        let t = |n: &str| format!("arn:aws:dynamodb:us-east-1:123456789012:table/{n}");
        assert_eq!(
            dynamodb(&c, "PutItem", br#"{"TableName":"orders","Item":{}}"#),
            vec![Need::new("dynamodb:PutItem", t("orders"))]
        );
        assert_eq!(
            dynamodb(
                &c,
                "Query",
                br#"{"TableName":"orders","IndexName":"byDate"}"#
            ),
            vec![Need::new(
                "dynamodb:Query",
                format!("{}/index/byDate", t("orders"))
            )]
        );
        let batch = dynamodb(&c, "BatchWriteItem", br#"{"RequestItems":{"a":[],"b":[]}}"#);
        assert_eq!(batch.len(), 2);
        assert!(batch.iter().all(|n| n.action == "dynamodb:BatchWriteItem"));
        let tx = dynamodb(
            &c,
            "TransactWriteItems",
            br#"{"TransactItems":[{"Put":{"TableName":"a"}},{"Delete":{"TableName":"b"}},{"ConditionCheck":{"TableName":"a"}}]}"#,
        );
        assert_eq!(
            tx,
            vec![
                Need::new("dynamodb:PutItem", t("a")),
                Need::new("dynamodb:DeleteItem", t("b")),
                Need::new("dynamodb:ConditionCheckItem", t("a")),
            ]
        );
        assert_eq!(
            dynamodb(&c, "ListTables", b"{}"),
            vec![Need::new("dynamodb:ListTables", "*")]
        );
        assert_eq!(
            dynamodb(&c, "GetItem", b"not json"),
            vec![Need::new("dynamodb:GetItem", "*")]
        );
        assert_eq!(
            dynamodb(
                &c,
                "GetItem",
                format!(r#"{{"TableName":"{}"}}"#, t("x")).as_bytes()
            ),
            vec![Need::new("dynamodb:GetItem", t("x"))],
            "a table ARN as TableName"
        );
        assert_eq!(
            dynamodb(
                &c,
                "ExecuteStatement",
                br#"{"Statement":"SELECT * FROM \"orders\" WHERE id = ?"}"#
            ),
            vec![Need::new("dynamodb:PartiQLSelect", t("orders"))]
        );
        assert_eq!(
            dynamodb(
                &c,
                "ExecuteStatement",
                br#"{"Statement":"INSERT INTO orders VALUE {'id': 1}"}"#
            ),
            vec![Need::new("dynamodb:PartiQLInsert", t("orders"))]
        );
    }

    #[test]
    fn function_arns() {
        assert_eq!(
            function_arn(&ctx(), "f", Some("live")),
            "arn:aws:lambda:us-east-1:123456789012:function:f:live"
        );
    }
}
