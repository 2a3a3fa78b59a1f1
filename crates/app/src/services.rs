//! The data services: the box credentials, the embedded S3 and DynamoDB
//! endpoints (or external ones from configuration), the template's buckets
//! and tables, and what workers are told about them. Printing them is the
//! CLI's job.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use esb_config::Settings;
use esb_services_dynamodb::{DynamoConfig, DynamoServer, IndexSpec, KeySpec, TableSpec};
use esb_services_s3::{S3Config, S3Server};

use crate::error::{AppError, Context};

/// The box's credentials: the administrator's key for S3, DynamoDB and
/// the Invoke API. Workers never get them: each function has its own
/// (`crate::iam`).
#[derive(Clone)]
pub struct BoxCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Generated just now (print it once).
    pub generated: bool,
}

impl std::fmt::Debug for BoxCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Credentials from configuration, else `<data_dir>/credentials.json`
/// (generated with mode 0600 on first start; shared with the Invoke API's
/// SigV4 check in esb-auth).
pub fn credentials(settings: &Settings, data_dir: &Path) -> Result<BoxCredentials, AppError> {
    if let (Some(akid), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
        esb_auth::check_not_placeholder("secret_access_key", secret)
            .context(|| "refusing the configured credentials".into())?;
        return Ok(BoxCredentials {
            access_key_id: akid.clone(),
            secret_access_key: secret.clone(),
            generated: false,
        });
    }
    let (creds, generated) = esb_auth::Credentials::load_or_generate(data_dir)
        .context(|| "cannot load the box credentials".into())?;
    Ok(BoxCredentials {
        access_key_id: creds.aws_access_key_id,
        secret_access_key: creds.aws_secret_access_key,
        generated,
    })
}

/// The running (or external) data services.
#[derive(Debug, Default)]
pub struct Services {
    s3: Option<S3Server>,
    dynamodb: Option<DynamoServer>,
    /// URL workers and clients use for S3, if any.
    pub s3_url: Option<String>,
    /// URL workers and clients use for DynamoDB, if any.
    pub dynamodb_url: Option<String>,
    /// Buckets and tables created at this start.
    pub created: Vec<String>,
}

/// The listener limits of the settings (gateway, S3 and DynamoDB share
/// them; robustness H10/H11).
pub(crate) fn listener_limits(settings: &Settings) -> esb_gateway::ListenerLimits {
    esb_gateway::ListenerLimits {
        header_timeout: settings.header_timeout,
        body_timeout: settings.body_timeout,
        idle_timeout: settings.keepalive_timeout,
        write_timeout: settings.write_timeout,
        handshake_timeout: settings.handshake_timeout,
        max_connections: settings.max_connections,
    }
}

/// Binds and starts the enabled endpoints, then creates the template's
/// buckets and tables in them. Each listener failure names its port.
pub async fn start(
    settings: &Settings,
    data_dir: &Path,
    app: &esb_template::AppModel,
    creds: &BoxCredentials,
    s3_hook: Option<std::sync::Arc<dyn esb_services_s3::WriteHook>>,
    iam: Option<std::sync::Arc<esb_iam::Iam>>,
    ops: &crate::observability::ServiceOps,
) -> Result<Services, AppError> {
    let mut services = Services {
        s3_url: settings.s3_endpoint.clone(),
        dynamodb_url: settings.dynamodb_endpoint.clone(),
        ..Default::default()
    };
    if settings.s3_enabled {
        let listener = bind(settings.s3_listen, "S3", "s3_listen").await?;
        let mut config = S3Config::new(
            data_dir.join("s3"),
            creds.access_key_id.clone(),
            creds.secret_access_key.clone(),
        );
        config.hook = esb_services_s3::HookSlot(s3_hook);
        config.limits = listener_limits(settings);
        config.iam = iam.clone();
        config.on_operation = ops.s3.clone().map(|c| {
            esb_services_s3::OperationObserver(std::sync::Arc::new(move |op, status| {
                c.record(op, status)
            }))
        });
        let server = S3Server::start(config, listener)
            .await
            .context(|| "cannot start the embedded S3".into())?;
        let buckets: Vec<String> = app.buckets.iter().map(|b| b.name.clone()).collect();
        let created = server
            .ensure_buckets(&buckets)
            .context(|| "cannot create the template's buckets".into())?;
        services
            .created
            .extend(created.into_iter().map(|n| format!("bucket {n}")));
        services.s3_url = Some(url_for(server.local_addr()));
        services.s3 = Some(server);
    }
    if settings.dynamodb_enabled {
        let listener = bind(settings.dynamodb_listen, "DynamoDB", "dynamodb_listen").await?;
        let mut config = DynamoConfig::new(
            data_dir.join("dynamodb").join("dynamodb.sqlite3"),
            creds.access_key_id.clone(),
            creds.secret_access_key.clone(),
        );
        config.limits = listener_limits(settings);
        config.stream_identity = Some(esb_services_dynamodb::StreamIdentity {
            region: settings.region.clone(),
            account_id: settings.account_id.clone(),
        });
        config.iam = iam.clone();
        config.on_operation = ops.dynamodb.clone().map(|c| {
            esb_services_dynamodb::OperationObserver(std::sync::Arc::new(move |op, status| {
                c.record(op, status)
            }))
        });
        let server = DynamoServer::start(config, listener)
            .await
            .context(|| "cannot start the embedded DynamoDB".into())?;
        let specs: Vec<TableSpec> = app.tables.iter().map(table_spec).collect();
        let created = server
            .ensure_tables(&specs)
            .context(|| "cannot create the template's tables".into())?;
        services
            .created
            .extend(created.into_iter().map(|n| format!("table {n}")));
        services.dynamodb_url = Some(url_for(server.local_addr()));
        services.dynamodb = Some(server);
    }
    Ok(services)
}

async fn bind(
    addr: SocketAddr,
    what: &str,
    setting: &str,
) -> Result<tokio::net::TcpListener, AppError> {
    tokio::net::TcpListener::bind(addr).await.context(|| {
        format!(
            "cannot listen on {addr} for {what} (port {} is in use or not allowed; set {setting} to another address, or disable it)",
            addr.port()
        )
    })
}

/// The URL for a listener. A wildcard listener is reached on loopback.
/// An IP literal (not `localhost`) on purpose: boto3 addresses a hostname
/// endpoint virtual-hosted style (`bucket.localhost`), and most resolvers
/// without systemd do not resolve `*.localhost`; with an IP it uses path
/// style.
pub fn url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

pub(crate) fn table_spec(t: &esb_template::Table) -> TableSpec {
    let keys = |k: &[esb_template::KeyElement]| {
        k.iter()
            .map(|e| KeySpec {
                attribute_name: e.attribute_name.clone(),
                key_type: e.key_type.clone(),
            })
            .collect::<Vec<_>>()
    };
    let index = |i: &esb_template::SecondaryIndex| IndexSpec {
        index_name: i.index_name.clone(),
        key_schema: keys(&i.key_schema),
        projection_type: i.projection_type.clone(),
        non_key_attributes: i.non_key_attributes.clone(),
    };
    TableSpec {
        name: t.name.clone(),
        key_schema: keys(&t.key_schema),
        attribute_definitions: t
            .attribute_definitions
            .iter()
            .map(|a| (a.attribute_name.clone(), a.attribute_type.clone()))
            .collect(),
        global_secondary_indexes: t.global_secondary_indexes.iter().map(index).collect(),
        local_secondary_indexes: t.local_secondary_indexes.iter().map(index).collect(),
        stream_view_type: t.stream_view_type.clone(),
        ttl_attribute: t.ttl_attribute.clone(),
    }
}

impl Services {
    /// Variables every worker gets: the endpoints. Credentials are the
    /// function's own (`functions::function_specs`); the Lambda endpoint
    /// and region are set by the caller.
    pub fn worker_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if let Some(url) = &self.s3_url {
            env.insert("AWS_ENDPOINT_URL_S3".to_string(), url.clone());
        }
        if let Some(url) = &self.dynamodb_url {
            env.insert("AWS_ENDPOINT_URL_DYNAMODB".to_string(), url.clone());
        }
        env
    }

    /// Whether S3 is served here (else external or disabled).
    pub fn s3_embedded(&self) -> bool {
        self.s3.is_some()
    }

    /// The embedded DynamoDB's database (for stream triggers), if served here.
    pub fn dynamodb_database(&self) -> Option<&dynoxide::Database> {
        self.dynamodb.as_ref().map(DynamoServer::database)
    }

    /// Whether DynamoDB is served here (else external or disabled).
    pub fn dynamodb_embedded(&self) -> bool {
        self.dynamodb.is_some()
    }

    /// Stops the embedded endpoints (requests in flight finish first).
    pub async fn shutdown(self) {
        if let Some(s3) = self.s3 {
            s3.shutdown().await;
        }
        if let Some(db) = self.dynamodb {
            db.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_ip_urls_reachable_from_workers() {
        assert_eq!(
            url_for("127.0.0.1:9000".parse().unwrap()),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            url_for("0.0.0.0:8001".parse().unwrap()),
            "http://127.0.0.1:8001"
        );
        assert_eq!(
            url_for("10.0.0.5:9000".parse().unwrap()),
            "http://10.0.0.5:9000"
        );
    }

    #[test]
    fn worker_env_names_both_endpoints_and_never_the_box_credentials() {
        let services = Services {
            s3_url: Some("http://localhost:9000".into()),
            dynamodb_url: Some("http://ddb:8000".into()),
            ..Default::default()
        };
        let creds = BoxCredentials {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "s".into(),
            generated: false,
        };
        let env = services.worker_env();
        assert_eq!(env["AWS_ENDPOINT_URL_S3"], "http://localhost:9000");
        assert_eq!(env["AWS_ENDPOINT_URL_DYNAMODB"], "http://ddb:8000");
        assert!(!env.contains_key("AWS_ACCESS_KEY_ID"));
        assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"));
        assert!(!format!("{creds:?}").contains("secret_access_key"));
    }
}
