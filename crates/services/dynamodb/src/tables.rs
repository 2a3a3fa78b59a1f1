//! Tables declared by the application, as CreateTable requests.

use serde_json::{Value, json};

/// One key attribute: name, `HASH`/`RANGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Attribute name.
    pub attribute_name: String,
    /// `HASH` or `RANGE`.
    pub key_type: String,
}

/// A global or local secondary index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    /// Index name.
    pub index_name: String,
    /// Its key.
    pub key_schema: Vec<KeySpec>,
    /// `ALL`, `KEYS_ONLY` or `INCLUDE`.
    pub projection_type: String,
    /// Projected attributes for `INCLUDE`.
    pub non_key_attributes: Vec<String>,
}

/// A table to exist at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// Table name.
    pub name: String,
    /// Primary key.
    pub key_schema: Vec<KeySpec>,
    /// `(name, S|N|B)` of every key attribute of the table and its indexes.
    pub attribute_definitions: Vec<(String, String)>,
    /// Global secondary indexes.
    pub global_secondary_indexes: Vec<IndexSpec>,
    /// Local secondary indexes.
    pub local_secondary_indexes: Vec<IndexSpec>,
    /// Stream view type, when streams are enabled.
    pub stream_view_type: Option<String>,
    /// TTL attribute, when TTL is enabled.
    pub ttl_attribute: Option<String>,
}

fn keys(k: &[KeySpec]) -> Value {
    Value::Array(
        k.iter()
            .map(|k| json!({"AttributeName": k.attribute_name, "KeyType": k.key_type}))
            .collect(),
    )
}

fn index(i: &IndexSpec) -> Value {
    let projection_type = if i.projection_type.is_empty() {
        "ALL"
    } else {
        i.projection_type.as_str()
    };
    let mut projection = json!({"ProjectionType": projection_type});
    if !i.non_key_attributes.is_empty() {
        projection["NonKeyAttributes"] = json!(i.non_key_attributes);
    }
    json!({"IndexName": i.index_name, "KeySchema": keys(&i.key_schema), "Projection": projection})
}

/// The CreateTable request (DynamoDB JSON) for `spec`, on-demand billing.
pub fn create_table_request(spec: &TableSpec) -> Value {
    let mut req = json!({
        "TableName": spec.name,
        "KeySchema": keys(&spec.key_schema),
        "AttributeDefinitions": spec.attribute_definitions.iter()
            .map(|(n, t)| json!({"AttributeName": n, "AttributeType": t}))
            .collect::<Vec<_>>(),
        "BillingMode": "PAY_PER_REQUEST",
    });
    if !spec.global_secondary_indexes.is_empty() {
        req["GlobalSecondaryIndexes"] =
            Value::Array(spec.global_secondary_indexes.iter().map(index).collect());
    }
    if !spec.local_secondary_indexes.is_empty() {
        req["LocalSecondaryIndexes"] =
            Value::Array(spec.local_secondary_indexes.iter().map(index).collect());
    }
    if let Some(view) = &spec.stream_view_type {
        req["StreamSpecification"] = json!({"StreamEnabled": true, "StreamViewType": view});
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TableSpec {
        TableSpec {
            name: "orders".into(),
            key_schema: vec![
                KeySpec {
                    attribute_name: "pk".into(),
                    key_type: "HASH".into(),
                },
                KeySpec {
                    attribute_name: "sk".into(),
                    key_type: "RANGE".into(),
                },
            ],
            attribute_definitions: vec![
                ("pk".into(), "S".into()),
                ("sk".into(), "S".into()),
                ("status".into(), "S".into()),
            ],
            global_secondary_indexes: vec![IndexSpec {
                index_name: "by-status".into(),
                key_schema: vec![KeySpec {
                    attribute_name: "status".into(),
                    key_type: "HASH".into(),
                }],
                projection_type: "INCLUDE".into(),
                non_key_attributes: vec!["total".into()],
            }],
            local_secondary_indexes: vec![],
            stream_view_type: Some("NEW_IMAGE".into()),
            ttl_attribute: None,
        }
    }

    #[test]
    fn request_is_accepted_by_dynoxide() {
        let req = create_table_request(&spec());
        assert_eq!(
            req["GlobalSecondaryIndexes"][0]["Projection"]["NonKeyAttributes"][0],
            "total"
        );
        let db = dynoxide::Database::memory().unwrap();
        db.create_table(serde_json::from_value(req).unwrap())
            .unwrap();
        let described = db
            .describe_table(serde_json::from_value(json!({"TableName": "orders"})).unwrap())
            .unwrap();
        let text = serde_json::to_string(&described).unwrap();
        assert!(text.contains("by-status"), "{text}");
    }
}
