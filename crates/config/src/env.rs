//! The environment as a source of settings: the [`Env`] trait (the process
//! environment, or a map in tests, so no test ever sets a real variable)
//! and the readers each setting names in its declaration.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ConfigError;

/// Source of environment variables (the process environment, or a map in
/// tests).
pub trait Env {
    /// The value of `name`, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for BTreeMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| (*v).to_string())
    }
}

/// The variable's value; an empty value counts as unset.
fn value(env: &dyn Env, name: Option<&str>) -> Option<(String, String)> {
    let name = name?;
    env.var(name)
        .filter(|v| !v.is_empty())
        .map(|v| (name.to_string(), v))
}

fn invalid(name: String, value: String, message: impl ToString) -> ConfigError {
    ConfigError::Env {
        name,
        value,
        message: message.to_string(),
    }
}

/// A value with a [`std::str::FromStr`] implementation.
pub(crate) fn parse<T: std::str::FromStr>(
    env: &dyn Env,
    name: Option<&str>,
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value(env, name)
        .map(|(name, v)| v.parse::<T>().map_err(|e| invalid(name, v, e)))
        .transpose()
}

/// A humantime duration (`30s`, `5m`).
pub(crate) fn duration(env: &dyn Env, name: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    value(env, name)
        .map(|(name, v)| humantime::parse_duration(&v).map_err(|e| invalid(name, v, e)))
        .transpose()
}

/// `1/true/yes/on` or `0/false/no/off`.
pub(crate) fn boolean(env: &dyn Env, name: Option<&str>) -> Result<Option<bool>, ConfigError> {
    value(env, name)
        .map(|(name, v)| match v.as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(invalid(name, v, "expected true or false")),
        })
        .transpose()
}

/// A comma-separated list.
pub(crate) fn list(env: &dyn Env, name: Option<&str>) -> Result<Option<Vec<String>>, ConfigError> {
    Ok(value(env, name).map(|(_, v)| v.split(',').map(|k| k.trim().to_string()).collect()))
}

/// For settings no variable sets.
pub(crate) fn none<T>(_env: &dyn Env, _name: Option<&str>) -> Result<Option<T>, ConfigError> {
    Ok(None)
}
