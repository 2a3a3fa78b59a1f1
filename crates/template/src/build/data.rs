//! Data resources: tables, buckets, layers.

use std::collections::HashMap;

use super::*;

impl Builder<'_, '_> {
    pub(super) fn table(&mut self, r: &Resolved) -> Table {
        let p = &r.props;
        let at = format!("Resources.{}.Properties", r.id);
        let name = text(p, "TableName").unwrap_or_else(|| r.id.clone());
        let keys = |n: Option<&Node>| -> Vec<KeyElement> {
            match n {
                Some(Node::List(items)) => items
                    .iter()
                    .map(|k| KeyElement {
                        attribute_name: text(k, "AttributeName").unwrap_or_default(),
                        key_type: text(k, "KeyType").unwrap_or_else(|| "HASH".into()),
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        let indexes = |n: Option<&Node>| -> Vec<SecondaryIndex> {
            match n {
                Some(Node::List(items)) => items
                    .iter()
                    .map(|i| {
                        let proj = i.get("Projection").cloned().unwrap_or(Node::Null);
                        SecondaryIndex {
                            index_name: text(i, "IndexName").unwrap_or_default(),
                            key_schema: keys(i.get("KeySchema")),
                            projection_type: text(&proj, "ProjectionType")
                                .unwrap_or_else(|| "ALL".into()),
                            non_key_attributes: list(proj.get("NonKeyAttributes")),
                        }
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        if r.rtype == "AWS::Serverless::SimpleTable" {
            let pk = p.get("PrimaryKey").cloned().unwrap_or(Node::Null);
            let key = text(&pk, "Name").unwrap_or_else(|| "id".into());
            let ty = match text(&pk, "Type").as_deref() {
                Some("Number") => "N",
                Some("Binary") => "B",
                _ => "S",
            };
            return Table {
                logical_id: r.id.clone(),
                name,
                resource_type: r.rtype.clone(),
                key_schema: vec![KeyElement {
                    attribute_name: key.clone(),
                    key_type: "HASH".into(),
                }],
                attribute_definitions: vec![AttributeDefinition {
                    attribute_name: key,
                    attribute_type: ty.into(),
                }],
                global_secondary_indexes: Vec::new(),
                local_secondary_indexes: Vec::new(),
                billing_mode: if p.get("ProvisionedThroughput").is_some() {
                    "PROVISIONED".into()
                } else {
                    "PAY_PER_REQUEST".into()
                },
                stream_view_type: None,
                ttl_attribute: None,
            };
        }
        let key_schema = keys(p.get("KeySchema"));
        if key_schema.is_empty() {
            self.ctx.warn(
                K::InvalidValue,
                &format!("{at}.KeySchema"),
                "table has no KeySchema",
            );
        }
        let attribute_definitions = match p.get("AttributeDefinitions") {
            Some(Node::List(items)) => items
                .iter()
                .map(|a| AttributeDefinition {
                    attribute_name: text(a, "AttributeName").unwrap_or_default(),
                    attribute_type: text(a, "AttributeType").unwrap_or_else(|| "S".into()),
                })
                .collect(),
            _ => Vec::new(),
        };
        let ttl = p
            .get("TimeToLiveSpecification")
            .cloned()
            .unwrap_or(Node::Null);
        Table {
            logical_id: r.id.clone(),
            name,
            resource_type: r.rtype.clone(),
            key_schema,
            attribute_definitions,
            global_secondary_indexes: indexes(p.get("GlobalSecondaryIndexes")),
            local_secondary_indexes: indexes(p.get("LocalSecondaryIndexes")),
            billing_mode: text(p, "BillingMode").unwrap_or_else(|| "PROVISIONED".into()),
            stream_view_type: p
                .get("StreamSpecification")
                .and_then(|s| text(s, "StreamViewType")),
            ttl_attribute: ttl
                .get("Enabled")
                .and_then(Node::as_bool)
                .unwrap_or(false)
                .then(|| text(&ttl, "AttributeName"))
                .flatten(),
        }
    }

    pub(super) fn bucket(
        &mut self,
        r: &Resolved,
        function_ids: &HashMap<String, String>,
    ) -> Bucket {
        let p = &r.props;
        let name = text(p, "BucketName").unwrap_or_else(|| {
            format!("{}-{}", self.stack_name, r.id)
                .to_lowercase()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        });
        let mut notifications = Vec::new();
        if let Some(Node::List(items)) = p
            .get("NotificationConfiguration")
            .and_then(|n| n.get("LambdaConfigurations"))
        {
            for c in items {
                let arn = text(c, "Function").unwrap_or_default();
                let (prefix, suffix) = key_filter(c.get("Filter"));
                notifications.push(BucketNotification {
                    events: list(c.get("Event")),
                    function: function_ids.get(&arn).cloned(),
                    function_arn: arn,
                    prefix,
                    suffix,
                });
            }
        }
        Bucket {
            logical_id: r.id.clone(),
            name,
            notifications,
        }
    }

    pub(super) fn layer(&mut self, r: &Resolved, arn: String) -> Layer {
        let p = &r.props;
        // SAM `ContentUri`, or CloudFormation `Content` (a local path before
        // packaging or from CDK asset metadata, else `{S3Bucket, S3Key}`).
        let key = if r.rtype == "AWS::Lambda::LayerVersion" {
            "Content"
        } else {
            "ContentUri"
        };
        let at = format!("Resources.{}.Properties.{key}", r.id);
        let content = match p.get(key) {
            Some(c @ Node::Map(_)) => {
                let uri = format!(
                    "s3://{}/{}",
                    text(c, "Bucket")
                        .or_else(|| text(c, "S3Bucket"))
                        .unwrap_or_default(),
                    text(c, "Key")
                        .or_else(|| text(c, "S3Key"))
                        .unwrap_or_default()
                );
                Some(self.remote_code(&at, &uri))
            }
            Some(c) => c.scalar_text().map(|s| {
                if s.starts_with("s3://") {
                    self.remote_code(&at, &s)
                } else {
                    FunctionCode::Zip {
                        code_uri: abs_path(&self.base_dir, &s),
                    }
                }
            }),
            None => None,
        };
        Layer {
            logical_id: r.id.clone(),
            name: text(p, "LayerName").unwrap_or_else(|| r.id.clone()),
            arn,
            content,
            compatible_runtimes: list(p.get("CompatibleRuntimes")),
        }
    }
}
