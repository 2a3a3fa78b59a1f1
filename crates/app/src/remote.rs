//! Talking to a running `esb up`: an HTTP client trusting its certificate,
//! SigV4-signed Invoke API calls with the box's credentials, and its status
//! endpoint.

use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use esb_config::Env;

use crate::error::{AppError, Context};
use crate::instance::Instance;

/// An HTTP client that trusts `ca_cert` (or nothing special).
pub fn http_client(ca_cert: Option<&Path>, insecure: bool) -> Result<reqwest::Client, AppError> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).context(|| format!("cannot read {}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .context(|| format!("{} is not a PEM certificate", path.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    if insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .context(|| "cannot build an HTTP client".into())
}

/// An HTTP client for a running instance.
pub fn instance_client(instance: &Instance) -> Result<reqwest::Client, AppError> {
    http_client(instance.ca_cert.as_deref(), false)
}

/// Credentials to sign Invoke API calls with: the box's own from the data
/// directory's credentials.json, else `AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY` from `env`.
pub fn signing_credentials(data_dir: Option<&Path>, env: &dyn Env) -> Option<(String, String)> {
    let from_file = data_dir
        .and_then(|d| std::fs::read(d.join(esb_auth::CREDENTIALS_FILE)).ok())
        .and_then(|text| serde_json::from_slice::<esb_auth::Credentials>(&text).ok());
    if let Some(c) = from_file {
        return Some((c.aws_access_key_id, c.aws_secret_access_key));
    }
    Some((
        env.var("AWS_ACCESS_KEY_ID")?,
        env.var("AWS_SECRET_ACCESS_KEY")?,
    ))
}

/// The answer of a remote invocation.
#[derive(Debug)]
pub struct RemoteAnswer {
    /// The function failed (`X-Amz-Function-Error`).
    pub function_error: bool,
    /// The decoded log tail (`X-Amz-Log-Result`).
    pub log_tail: Option<String>,
    /// The response body.
    pub body: Bytes,
}

/// Calls a running ESB's Invoke API (signed when `creds` are given).
pub async fn invoke_remote(
    client: &reqwest::Client,
    endpoint: &str,
    function: &str,
    payload: Bytes,
    creds: Option<(String, String)>,
) -> Result<RemoteAnswer, AppError> {
    let (url, request) = invoke_request(
        client,
        endpoint,
        function,
        &payload,
        creds,
        ("x-amz-log-type", "Tail"),
    )?;
    let resp = client
        .execute(request)
        .await
        .context(|| format!("cannot reach {endpoint}"))?;
    let status = resp.status();
    let function_error = resp.headers().contains_key("x-amz-function-error");
    let log_tail = resp
        .headers()
        .get("x-amz-log-result")
        .and_then(|tail| {
            base64::engine::general_purpose::STANDARD
                .decode(tail.as_bytes())
                .ok()
        })
        .map(|d| String::from_utf8_lossy(&d).into_owned());
    let body = resp
        .bytes()
        .await
        .context(|| format!("cannot read the answer of {url}"))?;
    if !status.is_success() {
        return Err(AppError::Refused(format!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(RemoteAnswer {
        function_error,
        log_tail,
        body,
    })
}

/// Queues an `Event` invocation on a running ESB; returns the request id.
pub async fn enqueue_remote(
    client: &reqwest::Client,
    endpoint: &str,
    function: &str,
    payload: Bytes,
    creds: Option<(String, String)>,
) -> Result<String, AppError> {
    let (url, request) = invoke_request(
        client,
        endpoint,
        function,
        &payload,
        creds,
        ("x-amz-invocation-type", "Event"),
    )?;
    let resp = client
        .execute(request)
        .await
        .context(|| format!("cannot reach {endpoint}"))?;
    let status = resp.status();
    let id = resp
        .headers()
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if status != reqwest::StatusCode::ACCEPTED {
        let body = resp.bytes().await.unwrap_or_default();
        return Err(AppError::Refused(format!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(id)
}

/// A (signed) Invoke API request with one extra header.
fn invoke_request(
    client: &reqwest::Client,
    endpoint: &str,
    function: &str,
    payload: &Bytes,
    creds: Option<(String, String)>,
    header: (&'static str, &'static str),
) -> Result<(String, reqwest::Request), AppError> {
    let url = format!(
        "{}/2015-03-31/functions/{}/invocations",
        endpoint.trim_end_matches('/'),
        function
    );
    let mut request = client
        .post(&url)
        .header(header.0, header.1)
        .body(payload.clone())
        .build()
        .context(|| format!("invalid endpoint {endpoint}"))?;
    if let Some((akid, secret)) = creds {
        let mut headers = http::HeaderMap::new();
        let host = request.url().authority().to_string();
        headers.insert(
            http::header::HOST,
            host.parse()
                .context(|| format!("invalid endpoint {endpoint}"))?,
        );
        headers.insert(header.0, http::HeaderValue::from_static(header.1));
        let params = esb_sigv4::SigningParams {
            access_key_id: &akid,
            secret_access_key: &secret,
            region: "us-east-1",
            service: "lambda",
            time: std::time::SystemTime::now(),
        };
        esb_sigv4::sign(
            "POST",
            request.url().path(),
            request.url().query().unwrap_or(""),
            &mut headers,
            esb_sigv4::Payload::Body(payload),
            &params,
        )
        .context(|| "cannot sign the request".into())?;
        headers.remove(http::header::HOST);
        request.headers_mut().extend(headers);
    }
    Ok((url, request))
}

/// The functions and workers of a running instance (`/_esb/status`).
pub async fn status(instance: &Instance) -> Result<Vec<esb_pool::FunctionStatus>, AppError> {
    let client = instance_client(instance)?;
    let url = format!("{}/_esb/status", instance.url);
    let resp = client
        .get(&url)
        .send()
        .await
        .context(|| format!("cannot reach esb up at {}", instance.url))?;
    if !resp.status().is_success() {
        return Err(AppError::Refused(format!(
            "{url} answered {}",
            resp.status()
        )));
    }
    resp.json()
        .await
        .context(|| "unexpected answer from /_esb/status".into())
}

/// The `Event` queue of a running instance (`/_esb/status/events`).
pub async fn event_queue_status(instance: &Instance) -> Result<serde_json::Value, AppError> {
    let client = instance_client(instance)?;
    let url = format!("{}/_esb/status/events", instance.url);
    let resp = client
        .get(&url)
        .send()
        .await
        .context(|| format!("cannot reach esb up at {}", instance.url))?;
    if !resp.status().is_success() {
        return Err(AppError::Refused(format!(
            "{url} answered {}",
            resp.status()
        )));
    }
    resp.json()
        .await
        .context(|| "unexpected answer from /_esb/status/events".into())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn signs_with_the_data_dir_credentials_else_the_environment() {
        let env = BTreeMap::from([
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "secret-env"),
        ]);
        assert_eq!(
            signing_credentials(None, &env),
            Some(("AKIDENV".into(), "secret-env".into()))
        );
        assert_eq!(
            signing_credentials(None, &BTreeMap::<&str, &str>::new()),
            None
        );
        let dir = std::env::temp_dir().join(format!("esb-remote-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (creds, _) = esb_auth::Credentials::load_or_generate(&dir).unwrap();
        assert_eq!(
            signing_credentials(Some(&dir), &env),
            Some((creds.aws_access_key_id, creds.aws_secret_access_key))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
