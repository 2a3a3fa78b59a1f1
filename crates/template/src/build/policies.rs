//! A function's permissions: SAM `Policies` (a managed policy name or ARN,
//! a SAM policy template, an inline policy document, or a list of these),
//! or the `AWS::IAM::Role` its `Role` names (the role's
//! `Policies[].PolicyDocument`, its `ManagedPolicyArns`, and the
//! template's `AWS::IAM::Policy` / `AWS::IAM::ManagedPolicy` resources
//! attached to it). Values are already resolved: a `!Ref Table` in a
//! template parameter is the table's local name.
//!
//! As SAM: a function without `Role` gets a generated `<LogicalId>Role`
//! with `AWSLambdaBasicExecutionRole` plus its `Policies`; with `Role`,
//! `Policies` is ignored (warned).

use super::*;
use crate::resolve::Resolved;

const ROLE: &str = "AWS::IAM::Role";
const MANAGED_POLICY: &str = "AWS::IAM::ManagedPolicy";
const POLICY: &str = "AWS::IAM::Policy";

impl Builder<'_, '_> {
    /// Fills `permissions` of every function from its resource.
    pub(super) fn permissions(&mut self, rt: &ResolvedTemplate, functions: &mut [Function]) {
        for r in &rt.resources {
            if !matches!(
                r.rtype.as_str(),
                "AWS::Serverless::Function" | "AWS::Lambda::Function"
            ) {
                continue;
            }
            let perms = self.function_permissions(r, &rt.resources);
            if let Some(f) = functions.iter_mut().find(|f| f.logical_id == r.id) {
                f.permissions = perms;
            }
        }
    }

    fn function_permissions(
        &mut self,
        r: &Resolved,
        resources: &[Resolved],
    ) -> FunctionPermissions {
        let at = format!("Resources.{}.Properties", r.id);
        let role = r.props.get("Role").and_then(Node::scalar_text);
        let Some(role) = role else {
            if r.rtype == "AWS::Lambda::Function" {
                // CloudFormation requires Role; without it nothing is known.
                return FunctionPermissions {
                    role_name: format!("{}Role", r.id),
                    policies: Vec::new(),
                    external_role: Some("(none)".into()),
                };
            }
            let mut policies = vec![PolicyEntry::Managed {
                name: "AWSLambdaBasicExecutionRole".into(),
            }];
            if let Some(p) = r.props.get("Policies") {
                policies.extend(self.sam_policies(p, resources, &format!("{at}.Policies")));
            }
            return FunctionPermissions {
                role_name: format!("{}Role", r.id),
                policies,
                external_role: None,
            };
        };
        if r.props.get("Policies").is_some() {
            self.ctx.warn(
                K::InvalidValue,
                &format!("{at}.Policies"),
                "Policies is ignored when Role is set (as SAM does)",
            );
        }
        match find_role(&role, resources) {
            Some(role_res) => self.template_role(role_res, resources),
            None => FunctionPermissions {
                role_name: role.rsplit(['/', ':']).next().unwrap_or(&role).to_string(),
                policies: Vec::new(),
                external_role: Some(role),
            },
        }
    }

    /// SAM's `Policies`: string, list, or one document.
    fn sam_policies(&mut self, p: &Node, resources: &[Resolved], at: &str) -> Vec<PolicyEntry> {
        let items: Vec<&Node> = match p {
            Node::List(items) => items.iter().collect(),
            other => vec![other],
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let here = format!("{at}.{i}");
            match item {
                Node::String(name) => out.push(managed_or_local(name, resources)),
                Node::Map(_) if item.get("Statement").is_some() => {
                    out.push(PolicyEntry::Document {
                        name: format!("inline policy {}", i + 1),
                        document: item.to_json(),
                    });
                }
                Node::Map(entries) if entries.len() == 1 => {
                    let (name, params) = &entries[0];
                    out.push(PolicyEntry::Template {
                        name: name.clone(),
                        parameters: string_map(Some(params)),
                    });
                }
                _ => self.ctx.warn(
                    K::InvalidValue,
                    &here,
                    "a policy must be a managed policy name or ARN, a SAM policy template or a policy document; ignored",
                ),
            }
        }
        out
    }

    /// A template `AWS::IAM::Role`'s policies.
    fn template_role(&mut self, role: &Resolved, resources: &[Resolved]) -> FunctionPermissions {
        let p = &role.props;
        let role_name = text(p, "RoleName").unwrap_or_else(|| role.id.clone());
        let mut policies = Vec::new();
        if let Some(Node::List(items)) = p.get("Policies") {
            for (i, item) in items.iter().enumerate() {
                let name = text(item, "PolicyName").unwrap_or_else(|| format!("{}", i + 1));
                match item.get("PolicyDocument") {
                    Some(doc) => policies.push(PolicyEntry::Document {
                        name: format!("role {} policy {name}", role.id),
                        document: doc.to_json(),
                    }),
                    None => self.ctx.warn(
                        K::InvalidValue,
                        &format!("Resources.{}.Properties.Policies.{i}", role.id),
                        "role policy has no PolicyDocument; ignored",
                    ),
                }
            }
        }
        for arn in list(p.get("ManagedPolicyArns")) {
            policies.push(managed_or_local(&arn, resources));
        }
        // Policies of the template attached to this role by `Roles`.
        for r in resources {
            if !matches!(r.rtype.as_str(), POLICY | MANAGED_POLICY) {
                continue;
            }
            let attached = list(r.props.get("Roles"))
                .iter()
                .any(|n| n == &role.id || n == &role_name);
            if attached && let Some(doc) = r.props.get("PolicyDocument") {
                policies.push(PolicyEntry::Document {
                    name: format!("policy {}", r.id),
                    document: doc.to_json(),
                });
            }
        }
        FunctionPermissions {
            role_name,
            policies,
            external_role: None,
        }
    }
}

/// The template role a `Role` value (`!Ref R` = `R`, `!GetAtt R.Arn`, an
/// ARN ending in `role/<RoleName>`) names.
fn find_role<'r>(role: &str, resources: &'r [Resolved]) -> Option<&'r Resolved> {
    let last = role.rsplit(['/', ':']).next().unwrap_or(role);
    resources.iter().filter(|r| r.rtype == ROLE).find(|r| {
        r.id == role || r.id == last || text(&r.props, "RoleName").is_some_and(|n| n == last)
    })
}

/// A managed policy name/ARN, or the template's `AWS::IAM::ManagedPolicy`
/// it names (`!Ref P` resolves to `P`).
fn managed_or_local(name: &str, resources: &[Resolved]) -> PolicyEntry {
    let last = name.rsplit(['/', ':']).next().unwrap_or(name);
    let local = resources
        .iter()
        .filter(|r| r.rtype == MANAGED_POLICY)
        .find(|r| {
            r.id == name
                || r.id == last
                || text(&r.props, "ManagedPolicyName").is_some_and(|n| n == last)
        });
    match local.and_then(|r| r.props.get("PolicyDocument").map(|d| (r, d))) {
        Some((r, doc)) => PolicyEntry::Document {
            name: format!("managed policy {}", r.id),
            document: doc.to_json(),
        },
        None => PolicyEntry::Managed {
            name: name.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::model::{FunctionPermissions, PolicyEntry};

    const TEMPLATE: &str = r#"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage: {Type: String, Default: dev}
Resources:
  Orders:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Sub orders-${Stage}
      KeySchema: [{AttributeName: id, KeyType: HASH}]
      AttributeDefinitions: [{AttributeName: id, AttributeType: S}]
  Photos:
    Type: AWS::S3::Bucket
  Reader:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      CodeUri: src/
      Policies:
        - DynamoDBReadPolicy:
            TableName: !Ref Orders
        - S3ReadPolicy:
            BucketName: !Ref Photos
        - AmazonSQSReadOnlyAccess
        - Version: '2012-10-17'
          Statement:
            - Effect: Deny
              Action: s3:GetObject
              Resource: !Sub '${Photos.Arn}/private/*'
  Single:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      CodeUri: src/
      Policies: arn:aws:iam::aws:policy/AmazonS3FullAccess
  Plain:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      CodeUri: src/
  WithRole:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      CodeUri: src/
      Role: !GetAtt AppRole.Arn
      Policies: [AmazonS3FullAccess]
  External:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      CodeUri: src/
      Role: arn:aws:iam::123456789012:role/elsewhere
  Raw:
    Type: AWS::Lambda::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      Code: src/
      Role: !Ref AppRole
  AppRole:
    Type: AWS::IAM::Role
    Properties:
      RoleName: app-role
      AssumeRolePolicyDocument: {}
      ManagedPolicyArns:
        - arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole
        - !Ref Shared
      Policies:
        - PolicyName: orders
          PolicyDocument:
            Statement:
              - Effect: Allow
                Action: dynamodb:PutItem
                Resource: !GetAtt Orders.Arn
  Shared:
    Type: AWS::IAM::ManagedPolicy
    Properties:
      PolicyDocument:
        Statement: [{Effect: Allow, Action: 's3:*', Resource: '*'}]
  Extra:
    Type: AWS::IAM::Policy
    Properties:
      PolicyName: extra
      Roles: [!Ref AppRole]
      PolicyDocument:
        Statement: [{Effect: Allow, Action: 'lambda:InvokeFunction', Resource: '*'}]
"#;

    fn load() -> crate::Loaded {
        crate::parse_str(
            TEMPLATE,
            "template.yaml",
            Path::new("/t"),
            &crate::ResolveOptions::default(),
        )
        .unwrap()
    }

    fn perms<'a>(l: &'a crate::Loaded, id: &str) -> &'a FunctionPermissions {
        &l.app.function(id).unwrap().permissions
    }

    #[test]
    fn sam_policies_in_every_form_resolve_to_local_names() {
        let l = load();
        let p = perms(&l, "Reader");
        assert_eq!(p.role_name, "ReaderRole");
        assert_eq!(p.external_role, None);
        assert_eq!(
            p.policies[0],
            PolicyEntry::Managed {
                name: "AWSLambdaBasicExecutionRole".into()
            },
            "SAM's generated role has basic execution"
        );
        assert_eq!(
            p.policies[1],
            PolicyEntry::Template {
                name: "DynamoDBReadPolicy".into(),
                parameters: [("TableName".to_string(), "orders-dev".to_string())].into(),
            }
        );
        let PolicyEntry::Template { parameters, .. } = &p.policies[2] else {
            panic!("{:?}", p.policies[2]);
        };
        assert_eq!(parameters["BucketName"], "esb-photos");
        assert_eq!(
            p.policies[3],
            PolicyEntry::Managed {
                name: "AmazonSQSReadOnlyAccess".into()
            }
        );
        let PolicyEntry::Document { name, document } = &p.policies[4] else {
            panic!("{:?}", p.policies[4]);
        };
        assert_eq!(name, "inline policy 4");
        assert_eq!(
            document["Statement"][0]["Resource"],
            "arn:aws:s3:::esb-photos/private/*"
        );
        assert_eq!(
            perms(&l, "Single").policies[1],
            PolicyEntry::Managed {
                name: "arn:aws:iam::aws:policy/AmazonS3FullAccess".into()
            }
        );
        assert_eq!(perms(&l, "Plain").policies.len(), 1);
    }

    #[test]
    fn a_template_role_brings_its_policies_and_attached_ones() {
        let l = load();
        for id in ["WithRole", "Raw"] {
            let p = perms(&l, id);
            assert_eq!(p.role_name, "app-role", "{id}");
            assert_eq!(p.external_role, None);
            let names: Vec<String> = p
                .policies
                .iter()
                .map(|e| match e {
                    PolicyEntry::Managed { name } => name.clone(),
                    PolicyEntry::Document { name, .. } => name.clone(),
                    PolicyEntry::Template { name, .. } => name.clone(),
                })
                .collect();
            assert_eq!(
                names,
                [
                    "role AppRole policy orders",
                    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
                    "managed policy Shared",
                    "policy Extra"
                ],
                "{id}: Policies is ignored with Role"
            );
            let PolicyEntry::Document { document, .. } = &p.policies[0] else {
                panic!()
            };
            assert_eq!(
                document["Statement"][0]["Resource"],
                "arn:aws:dynamodb:us-east-1:123456789012:table/orders-dev"
            );
        }
        assert!(
            l.warnings.iter().any(|w| w
                .to_string()
                .contains("Policies is ignored when Role is set")),
            "{:?}",
            l.warnings
        );
    }

    #[test]
    fn a_role_outside_the_template_is_unknown() {
        let l = load();
        let p = perms(&l, "External");
        assert_eq!(
            p.external_role.as_deref(),
            Some("arn:aws:iam::123456789012:role/elsewhere")
        );
        assert_eq!(p.role_name, "elsewhere");
        assert!(p.policies.is_empty());
    }
}
