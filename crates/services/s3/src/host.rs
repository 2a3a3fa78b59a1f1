//! Virtual-hosted-style addressing for local names.
//!
//! boto3 addresses a hostname endpoint such as `http://localhost:9000` as
//! `bucket.localhost:9000`, while an IP endpoint stays path style (s3s never
//! asks us about IP hosts). s3s's own `SingleDomain` compares the Host
//! header including its port and treats any unknown name as a bucket, so a
//! request to `localhost:9000` would address a bucket called
//! `localhost:9000`. This parser ignores the port and treats unknown names
//! (a machine's hostname, `host.docker.internal`) as path style.

use s3s::S3Result;
use s3s::host::{S3Host, VirtualHost};

/// Base domains under which `<bucket>.<domain>` addresses a bucket.
#[derive(Debug, Clone)]
pub struct LocalHosts {
    domains: Vec<String>,
}

impl LocalHosts {
    /// `domains` such as `localhost` and `s3.localhost` (lower-case, no port).
    pub fn new<I, S>(domains: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut domains: Vec<String> = domains
            .into_iter()
            .map(|d| d.as_ref().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        // Longest first, so `b.s3.localhost` is bucket `b` under
        // `s3.localhost`, not bucket `b.s3` under `localhost`.
        domains.sort_by_key(|d| std::cmp::Reverse(d.len()));
        Self { domains }
    }

    /// The bucket a Host header addresses, if it is virtual-hosted style.
    pub fn bucket_of(&self, host: &str) -> Option<String> {
        let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        for domain in &self.domains {
            if name == *domain {
                return None;
            }
            if let Some(bucket) = name
                .strip_suffix(domain.as_str())
                .and_then(|b| b.strip_suffix('.'))
                && !bucket.is_empty()
            {
                return Some(bucket.to_string());
            }
        }
        None
    }
}

impl Default for LocalHosts {
    fn default() -> Self {
        Self::new(["localhost", "s3.localhost"])
    }
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

impl S3Host for LocalHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        Ok(match self.bucket_of(host) {
            Some(bucket) => VirtualHost::new(host).with_bucket(bucket),
            None => VirtualHost::new(host),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_subdomains_of_local_names_are_virtual_hosted() {
        let hosts = LocalHosts::default();
        assert_eq!(
            hosts.bucket_of("my-bucket.localhost:9000").as_deref(),
            Some("my-bucket")
        );
        assert_eq!(
            hosts.bucket_of("data.s3.localhost").as_deref(),
            Some("data")
        );
        assert_eq!(
            hosts.bucket_of("a.b.localhost:9000").as_deref(),
            Some("a.b")
        );
    }

    #[test]
    fn bare_and_unknown_names_are_path_style() {
        let hosts = LocalHosts::default();
        assert_eq!(hosts.bucket_of("localhost:9000"), None);
        assert_eq!(hosts.bucket_of("s3.localhost:9000"), None);
        assert_eq!(hosts.bucket_of("my-laptop:9000"), None);
        assert_eq!(hosts.bucket_of("host.docker.internal:9000"), None);
        assert_eq!(hosts.bucket_of("notlocalhost:9000"), None);
    }
}
