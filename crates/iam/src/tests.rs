//! Tests of [`Iam`]: keys, modes, caching, messages.

use serde_json::json;

use super::*;

fn ctx() -> ArnContext {
    ArnContext::new("us-east-1", "123456789012")
}

const TABLE: &str = "arn:aws:dynamodb:us-east-1:123456789012:table/orders";

fn reader() -> FunctionPermissions {
    FunctionPermissions {
        function: "Reader".into(),
        role_name: "ReaderRole".into(),
        policies: vec![
            PolicySource::Managed("AWSLambdaBasicExecutionRole".into()),
            PolicySource::Template {
                name: "DynamoDBReadPolicy".into(),
                parameters: BTreeMap::from([("TableName".into(), "orders".into())]),
            },
        ],
        external_role: None,
    }
}

fn denier() -> FunctionPermissions {
    FunctionPermissions {
        function: "Denier".into(),
        role_name: "DenierRole".into(),
        policies: vec![
            PolicySource::Managed("arn:aws:iam::aws:policy/AmazonDynamoDBFullAccess".into()),
            PolicySource::Document {
                name: "inline policy 1".into(),
                document: json!({"Statement": [{"Effect": "Deny", "Action": "dynamodb:DeleteItem", "Resource": "*"}]}),
            },
        ],
        external_role: None,
    }
}

fn iam(mode: Mode) -> Iam {
    let iam = Iam::new(mode, ctx(), "box-secret");
    let warnings = iam.load(&[reader(), denier()]);
    assert!(warnings.is_empty(), "{warnings:?}");
    iam
}

#[test]
fn function_keys_resolve_to_their_function_and_secret() {
    let iam = iam(Mode::Enforce);
    let c = iam.credentials("Reader");
    assert_eq!(
        iam.principal(&c.access_key_id),
        Principal::Function("Reader".into())
    );
    assert_eq!(
        iam.secret_for(&c.access_key_id),
        Some(c.secret_access_key.clone())
    );
    assert_eq!(iam.principal("AKIABOXKEY"), Principal::Admin);
    assert_eq!(iam.secret_for("AKIABOXKEY"), None);
    // A function not loaded has no valid key.
    let ghost = iam.credentials("Ghost");
    assert_eq!(iam.secret_for(&ghost.access_key_id), None);
}

#[test]
fn enforce_refuses_with_awss_message() {
    let iam = iam(Mode::Enforce);
    let key = iam.credentials("Reader").access_key_id;
    assert_eq!(iam.check(&key, "dynamodb:GetItem", TABLE), Ok(()));
    let denied = iam.check(&key, "dynamodb:PutItem", TABLE).unwrap_err();
    assert_eq!(
        denied.message,
        "User: arn:aws:sts::123456789012:assumed-role/ReaderRole/Reader is not authorized to perform: \
         dynamodb:PutItem on resource: arn:aws:dynamodb:us-east-1:123456789012:table/orders because \
         no identity-based policy allows the dynamodb:PutItem action"
    );
    assert!(!denied.explicit);
    // Cached: the same answer again.
    assert_eq!(
        iam.check(&key, "dynamodb:PutItem", TABLE).unwrap_err(),
        denied
    );
    // The box's key is allowed everything.
    assert_eq!(
        iam.check("AKIABOXKEY", "dynamodb:DeleteTable", TABLE),
        Ok(())
    );
}

#[test]
fn explicit_deny_wins_over_a_managed_allow() {
    let iam = iam(Mode::Enforce);
    let key = iam.credentials("Denier").access_key_id;
    assert_eq!(iam.check(&key, "dynamodb:PutItem", TABLE), Ok(()));
    let denied = iam.check(&key, "dynamodb:DeleteItem", TABLE).unwrap_err();
    assert!(denied.explicit);
    assert!(
        denied
            .message
            .ends_with("with an explicit deny in an identity-based policy"),
        "{}",
        denied.message
    );
}

#[test]
fn check_all_stops_at_the_first_missing_permission() {
    let iam = iam(Mode::Enforce);
    let key = iam.credentials("Reader").access_key_id;
    let needs = actions::dynamodb(
        &ctx(),
        "TransactGetItems",
        br#"{"TransactItems":[{"Get":{"TableName":"orders"}},{"Get":{"TableName":"secrets"}}]}"#,
    );
    let denied = iam.check_all(&key, &needs).unwrap_err();
    assert!(denied.resource.ends_with("table/secrets"), "{denied:?}");
}

#[test]
fn warn_and_off_allow() {
    let key = iam(Mode::Warn).credentials("Reader").access_key_id;
    let warn = iam(Mode::Warn);
    assert_eq!(warn.check(&key, "dynamodb:PutItem", TABLE), Ok(()));
    assert_eq!(warn.check(&key, "dynamodb:PutItem", TABLE), Ok(()));
    assert!(warn.evaluates(&key));
    let off = iam(Mode::Off);
    assert_eq!(off.check(&key, "dynamodb:DeleteTable", TABLE), Ok(()));
    assert!(!off.evaluates(&key));
    assert_eq!(
        off.secret_for(&key),
        Some(off.credentials("Reader").secret_access_key)
    );
}

#[test]
fn an_external_role_allows_everything_and_says_so() {
    let iam = Iam::new(Mode::Enforce, ctx(), "s");
    let warnings = iam.load(&[FunctionPermissions {
        function: "Ext".into(),
        role_name: "Other".into(),
        policies: vec![],
        external_role: Some("arn:aws:iam::123456789012:role/Other".into()),
    }]);
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("Ext") && warnings[0].contains("unknown"),
        "{warnings:?}"
    );
    let key = iam.credentials("Ext").access_key_id;
    assert_eq!(iam.check(&key, "s3:DeleteBucket", "arn:aws:s3:::b"), Ok(()));
}

#[test]
fn unknown_sources_warn_naming_the_function() {
    let iam = Iam::new(Mode::Enforce, ctx(), "s");
    let warnings = iam.load(&[FunctionPermissions {
        function: "F".into(),
        role_name: "R".into(),
        policies: vec![
            PolicySource::Managed("AmazonMadeUpAccess".into()),
            PolicySource::Template {
                name: "MadeUpPolicy".into(),
                parameters: BTreeMap::new(),
            },
            PolicySource::Template {
                name: "S3ReadPolicy".into(),
                parameters: BTreeMap::new(),
            },
        ],
        external_role: None,
    }]);
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings.iter().all(|w| w.contains("function F")));
    assert!(warnings[0].contains("AmazonMadeUpAccess"));
    assert!(warnings[2].contains("BucketName"));
}

#[test]
fn reload_replaces_the_policies() {
    let iam = iam(Mode::Enforce);
    let key = iam.credentials("Reader").access_key_id;
    assert!(iam.check(&key, "dynamodb:PutItem", TABLE).is_err());
    let mut r = reader();
    r.policies.push(PolicySource::Template {
        name: "DynamoDBWritePolicy".into(),
        parameters: BTreeMap::from([("TableName".into(), "orders".into())]),
    });
    iam.load(&[r]);
    assert_eq!(iam.check(&key, "dynamodb:PutItem", TABLE), Ok(()));
    // Denier is gone: its key is no longer valid.
    assert_eq!(
        iam.secret_for(&iam.credentials("Denier").access_key_id),
        None
    );
}

#[test]
fn needed_names_a_template_or_a_statement() {
    assert!(
        needed(&ctx(), "dynamodb:PutItem", TABLE)
            .contains("DynamoDBWritePolicy: {TableName: orders}")
    );
    assert!(
        needed(&ctx(), "s3:ListAllMyBuckets", "arn:aws:s3:::*")
            .contains("Action: s3:ListAllMyBuckets")
    );
}

#[test]
fn the_cache_is_bounded() {
    let iam = iam(Mode::Enforce);
    let key = iam.credentials("Reader").access_key_id;
    for i in 0..(CACHE_LIMIT + 10) {
        let _ = iam.check(&key, "s3:GetObject", &format!("arn:aws:s3:::b/{i}"));
    }
    let entry = iam.entry(&key).unwrap();
    assert!(entry.cache.lock().len() <= CACHE_LIMIT);
}
