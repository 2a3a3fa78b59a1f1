//! The functions' credentials and policies (esb-iam) from the settings and
//! the template: each function gets its own access key (derived from the
//! box's secret, so stable per data directory; never the box's pair), and
//! the S3, DynamoDB and Invoke API endpoints check its role's policies in
//! the `iam_mode` the settings name.

use std::sync::Arc;

use esb_config::{IamMode, Settings};

use crate::services::BoxCredentials;

/// The settings' mode as esb-iam's.
pub fn mode(settings: &Settings) -> esb_iam::Mode {
    match settings.iam_mode {
        IamMode::Off => esb_iam::Mode::Off,
        IamMode::Warn => esb_iam::Mode::Warn,
        IamMode::Enforce => esb_iam::Mode::Enforce,
    }
}

/// Builds the credentials and policies of every function of `app`;
/// returns them with the warnings to show (unknown policies, conditions).
pub fn build(
    settings: &Settings,
    creds: &BoxCredentials,
    app: &esb_template::AppModel,
) -> (Arc<esb_iam::Iam>, Vec<String>) {
    let iam = esb_iam::Iam::new(
        mode(settings),
        esb_iam::ArnContext::new(&settings.region, &settings.account_id),
        &creds.secret_access_key,
    );
    let warnings = load(&iam, app);
    (Arc::new(iam), warnings)
}

/// (Re)loads the policies of `app`'s functions into `iam`.
pub fn load(iam: &esb_iam::Iam, app: &esb_template::AppModel) -> Vec<String> {
    let functions: Vec<esb_iam::FunctionPermissions> =
        app.functions.iter().map(permissions).collect();
    if iam.mode() == esb_iam::Mode::Off {
        // Keys still work; nothing is evaluated, so nothing to warn about.
        iam.load(&functions);
        return Vec::new();
    }
    iam.load(&functions)
}

/// A template function's permissions in esb-iam's terms.
pub fn permissions(f: &esb_template::Function) -> esb_iam::FunctionPermissions {
    let p = &f.permissions;
    esb_iam::FunctionPermissions {
        function: f.name.clone(),
        role_name: if p.role_name.is_empty() {
            format!("{}Role", f.logical_id)
        } else {
            p.role_name.clone()
        },
        policies: p
            .policies
            .iter()
            .map(|e| match e {
                esb_template::PolicyEntry::Managed { name } => {
                    esb_iam::PolicySource::Managed(name.clone())
                }
                esb_template::PolicyEntry::Template { name, parameters } => {
                    esb_iam::PolicySource::Template {
                        name: name.clone(),
                        parameters: parameters.clone(),
                    }
                }
                esb_template::PolicyEntry::Document { name, document } => {
                    esb_iam::PolicySource::Document {
                        name: name.clone(),
                        document: document.clone(),
                    }
                }
            })
            .collect(),
        external_role: p.external_role.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
Transform: AWS::Serverless-2016-10-31
Resources:
  Orders:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: orders
      KeySchema: [{AttributeName: id, KeyType: HASH}]
      AttributeDefinitions: [{AttributeName: id, AttributeType: S}]
  Reader:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: reader
      Runtime: python3.12
      Handler: app.handler
      CodeUri: src/
      Policies:
        - DynamoDBReadPolicy: {TableName: !Ref Orders}
        - MadeUpPolicy: {}
"#;

    #[test]
    fn a_templates_functions_get_keys_and_their_policies() {
        let loaded = esb_template::parse_str(
            TEMPLATE,
            "template.yaml",
            std::path::Path::new("/t"),
            &esb_template::ResolveOptions::default(),
        )
        .unwrap();
        let settings = Settings::resolve(&[&esb_config::SettingsLayer {
            iam_mode: Some(IamMode::Enforce),
            ..Default::default()
        }])
        .unwrap();
        let creds = BoxCredentials {
            access_key_id: "AKIABOX".into(),
            secret_access_key: "box-secret".into(),
            generated: false,
        };
        let (iam, warnings) = build(&settings, &creds, &loaded.app);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("function reader") && warnings[0].contains("MadeUpPolicy"));
        let key = iam.credentials("reader");
        assert_ne!(key.access_key_id, creds.access_key_id);
        assert_ne!(key.secret_access_key, creds.secret_access_key);
        let table = "arn:aws:dynamodb:us-east-1:123456789012:table/orders";
        assert!(
            iam.check(&key.access_key_id, "dynamodb:GetItem", table)
                .is_ok()
        );
        let denied = iam
            .check(&key.access_key_id, "dynamodb:PutItem", table)
            .unwrap_err();
        assert!(
            denied.message.contains("assumed-role/ReaderRole/reader"),
            "{}",
            denied.message
        );
    }
}
