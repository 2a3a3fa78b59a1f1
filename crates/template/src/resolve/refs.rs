//! What `Ref` and `GetAtt` give: physical names, ARNs, attributes.

use super::*;

impl<'a> Resolver<'a, '_> {
    // ---- references ----------------------------------------------------

    /// The name a resource gets locally (function name, table name…),
    /// before it is dressed as an ARN or URL.
    pub(super) fn base_name(&mut self, id: &str) -> String {
        if let Some(n) = self.names.get(id) {
            return n.clone();
        }
        let Some(&idx) = self.active.get(id) else {
            return id.to_string();
        };
        if let Some(pos) = self.name_stack.iter().position(|n| n == id) {
            let mut cycle: Vec<&str> = self.name_stack[pos..].iter().map(String::as_str).collect();
            cycle.push(id);
            self.ctx.error(
                DiagnosticKind::CyclicReference,
                &format!("Resources.{}", self.name_stack[pos]),
                format!("cyclic reference: {}", cycle.join(" -> ")),
            );
            return id.to_string();
        }
        let t = self.t;
        let r = &t.resources[idx];
        let prop = match r.rtype.as_str() {
            "AWS::Serverless::Function" | "AWS::Lambda::Function" => Some("FunctionName"),
            "AWS::Serverless::SimpleTable" | "AWS::DynamoDB::Table" => Some("TableName"),
            "AWS::S3::Bucket" => Some("BucketName"),
            "AWS::Serverless::LayerVersion" | "AWS::Lambda::LayerVersion" => Some("LayerName"),
            "AWS::SQS::Queue" => Some("QueueName"),
            "AWS::SNS::Topic" => Some("TopicName"),
            "AWS::Serverless::StateMachine" => Some("Name"),
            _ => None,
        };
        self.name_stack.push(id.to_string());
        let explicit = prop.and_then(|p| {
            let n = r.props.get(p)?;
            self.resolve(n, &format!("Resources.{id}.Properties.{p}"))
                .and_then(|v| v.scalar_text())
        });
        self.name_stack.pop();
        let name = explicit.unwrap_or_else(|| {
            if r.rtype == "AWS::S3::Bucket" {
                // Bucket names must be lower case; CloudFormation generates
                // `<stack>-<logicalid>-<random>`, ESB drops the random part.
                format!("{}-{}", self.opts.stack_name, id)
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
            } else {
                id.to_string()
            }
        });
        self.names.insert(id.to_string(), name.clone());
        name
    }

    pub(super) fn arn(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:{}:{service}:{}:{}:{resource}",
            self.opts.partition(),
            self.opts.region,
            self.opts.account_id
        )
    }

    pub(super) fn rtype(&self, id: &str) -> Option<&'a str> {
        let t = self.t;
        self.active.get(id).map(|&i| t.resources[i].rtype.as_str())
    }

    /// What `!Ref` of an active resource gives.
    pub(super) fn ref_value(&mut self, id: &str) -> String {
        let name = self.base_name(id);
        match self.rtype(id).unwrap_or("") {
            "AWS::Serverless::LayerVersion" | "AWS::Lambda::LayerVersion" => {
                self.arn("lambda", &format!("layer:{name}:1"))
            }
            "AWS::SQS::Queue" => format!(
                "https://sqs.{}.{}/{}/{name}",
                self.opts.region,
                self.opts.url_suffix(),
                self.opts.account_id
            ),
            "AWS::SNS::Topic" => self.arn("sns", &name),
            "AWS::Serverless::StateMachine" | "AWS::StepFunctions::StateMachine" => {
                self.arn("states", &format!("stateMachine:{name}"))
            }
            _ => name,
        }
    }

    pub(super) fn try_ref(&mut self, name: &str) -> Result<Option<Node>, Miss> {
        let o = self.opts;
        let s = |v: &str| Ok(Some(Node::String(v.to_string())));
        match name {
            "AWS::NoValue" => return Ok(None),
            "AWS::Region" => return s(&o.region),
            "AWS::AccountId" => return s(&o.account_id),
            "AWS::StackName" => return s(&o.stack_name),
            "AWS::Partition" => return s(o.partition()),
            "AWS::URLSuffix" => return s(o.url_suffix()),
            "AWS::NotificationARNs" => return Ok(Some(Node::List(Vec::new()))),
            "AWS::StackId" => {
                let id = self.arn(
                    "cloudformation",
                    &format!(
                        "stack/{}/00000000-0000-0000-0000-000000000000",
                        o.stack_name
                    ),
                );
                return s(&id);
            }
            _ => {}
        }
        if let Some(v) = self.params.get(name) {
            return Ok(Some(
                v.clone().unwrap_or_else(|| Node::String(name.to_string())),
            ));
        }
        if self.active.contains_key(name) {
            return Ok(Some(Node::String(self.ref_value(name))));
        }
        if name == "ServerlessRestApi" || name == "ServerlessHttpApi" {
            return s(name);
        }
        // SAM generates `<Function>Role` for functions without a Role.
        if let Some(f) = name.strip_suffix("Role")
            && self.rtype(f) == Some("AWS::Serverless::Function")
        {
            return s(&format!("{}-role", self.base_name(f)));
        }
        if self.dropped.contains(name) {
            Err(Miss::Dropped)
        } else {
            Err(Miss::NotFound)
        }
    }

    pub(super) fn get_att(&mut self, id: &str, attr: &str) -> Result<String, Miss> {
        let Some(rtype) = self.rtype(id) else {
            if let Some(f) = id.strip_suffix("Role")
                && self.rtype(f) == Some("AWS::Serverless::Function")
                && attr == "Arn"
            {
                let role = format!("{}-role", self.base_name(f));
                return Ok(format!(
                    "arn:{}:iam::{}:role/{role}",
                    self.opts.partition(),
                    self.opts.account_id
                ));
            }
            return Err(if self.dropped.contains(id) {
                Miss::Dropped
            } else {
                Miss::NotFound
            });
        };
        if is_stack(rtype)
            && let Some(out) = attr.strip_prefix("Outputs.")
        {
            self.child(id);
            return self
                .children
                .iter()
                .find(|(c, _)| c == id)
                .and_then(|(_, c)| c.as_ref())
                .and_then(|c| c.outputs.get(out).cloned())
                .ok_or(Miss::UnknownAttribute);
        }
        let name = self.base_name(id);
        let region = self.opts.region.clone();
        let v = match (rtype, attr) {
            ("AWS::Serverless::Function" | "AWS::Lambda::Function", "Arn") => {
                self.arn("lambda", &format!("function:{name}"))
            }
            ("AWS::Serverless::SimpleTable" | "AWS::DynamoDB::Table", "Arn") => {
                self.arn("dynamodb", &format!("table/{name}"))
            }
            ("AWS::Serverless::SimpleTable" | "AWS::DynamoDB::Table", "StreamArn") => self.arn(
                "dynamodb",
                &format!("table/{name}/stream/1970-01-01T00:00:00.000"),
            ),
            ("AWS::S3::Bucket", "Arn") => format!("arn:{}:s3:::{name}", self.opts.partition()),
            ("AWS::S3::Bucket", "DomainName") => format!("{name}.s3.{}", self.opts.url_suffix()),
            ("AWS::S3::Bucket", "RegionalDomainName") => {
                format!("{name}.s3.{region}.{}", self.opts.url_suffix())
            }
            ("AWS::S3::Bucket", "WebsiteURL") => {
                format!(
                    "http://{name}.s3-website-{region}.{}",
                    self.opts.url_suffix()
                )
            }
            ("AWS::SQS::Queue", "Arn") => self.arn("sqs", &name),
            ("AWS::SQS::Queue", "QueueName") => name,
            ("AWS::SQS::Queue", "QueueUrl") => self.ref_value(id),
            ("AWS::SNS::Topic", "TopicArn") => self.arn("sns", &name),
            ("AWS::SNS::Topic", "TopicName") => name,
            ("AWS::Serverless::LayerVersion" | "AWS::Lambda::LayerVersion", "Arn") => {
                self.ref_value(id)
            }
            // Reversible ids: the builder walks `ParentId` links with them.
            ("AWS::Serverless::Api" | "AWS::ApiGateway::RestApi", "RootResourceId") => {
                format!("{id}::root")
            }
            ("AWS::Serverless::Api" | "AWS::ApiGateway::RestApi", "RestApiId")
            | ("AWS::Serverless::HttpApi" | "AWS::ApiGatewayV2::Api", "ApiId")
            | ("AWS::ApiGateway::Resource", "ResourceId")
            | ("AWS::ApiGateway::Authorizer", "AuthorizerId")
            | ("AWS::ApiGatewayV2::Authorizer", "AuthorizerId")
            | ("AWS::ApiGatewayV2::Integration", "IntegrationId") => id.to_string(),
            ("AWS::Lambda::Url", "FunctionUrl") => {
                format!("https://{}.lambda-url.{region}.on.aws/", id.to_lowercase())
            }
            (
                "AWS::Serverless::HttpApi"
                | "AWS::ApiGatewayV2::Api"
                | "AWS::Serverless::Api"
                | "AWS::ApiGateway::RestApi",
                "ApiEndpoint",
            ) => format!(
                "https://{name}.execute-api.{region}.{}",
                self.opts.url_suffix()
            ),
            ("AWS::Cognito::UserPool", "Arn") => {
                self.arn("cognito-idp", &format!("userpool/{region}_{name}"))
            }
            ("AWS::Cognito::UserPool", "ProviderName") => {
                format!(
                    "cognito-idp.{region}.{}/{region}_{name}",
                    self.opts.url_suffix()
                )
            }
            ("AWS::Cognito::UserPool", "ProviderURL") => {
                format!(
                    "https://cognito-idp.{region}.{}/{region}_{name}",
                    self.opts.url_suffix()
                )
            }
            (_, "Arn") => {
                // SAM CLI synthesises an ARN for any resource; so do we.
                let service = rtype.split("::").nth(1).unwrap_or("unknown").to_lowercase();
                self.arn(&service, &name)
            }
            _ => return Err(Miss::UnknownAttribute),
        };
        Ok(v)
    }

    pub(super) fn miss_message(&self, what: &str, target: &str, miss: Miss) -> String {
        match miss {
            Miss::NotFound => {
                format!("{what} names {target}, which is not a parameter or resource")
            }
            Miss::Dropped => {
                format!(
                    "{what} names {target}, which is not created because its Condition is false"
                )
            }
            Miss::UnknownAttribute => {
                format!("{what}: attribute cannot be resolved locally for {target}")
            }
        }
    }
}
