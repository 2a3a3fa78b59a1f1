//! Loading the template with the settings' resolution options (region,
//! account, stack name, parameter overrides).

use esb_config::Settings;

use crate::error::AppError;

/// Template resolution options from the settings.
pub fn resolve_options(settings: &Settings) -> esb_template::ResolveOptions {
    esb_template::ResolveOptions {
        region: settings.region.clone(),
        account_id: settings.account_id.clone(),
        stack_name: settings.stack_name.clone(),
        parameter_overrides: settings.parameters.clone(),
    }
}

/// Loads the template the settings name. Warnings are in the result for
/// the caller to show (a local run lives with them; `esb validate` is the
/// strict one).
pub fn load_template(settings: &Settings) -> Result<esb_template::Loaded, AppError> {
    esb_template::load(&settings.template, &resolve_options(settings)).map_err(|err| {
        AppError::Template {
            path: settings.template.clone(),
            message: err.to_string(),
        }
    })
}
