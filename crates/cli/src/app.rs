//! The CLI's side of the assembly in `esb-app`: loading the template with
//! its warnings shown once, and the helpers other commands call by these
//! names.

#[cfg(feature = "docker")]
use esb_config::Settings;

#[cfg(feature = "docker")]
pub use esb_app::functions::image_tag;
pub use esb_app::table;

/// Loads the template with the settings' parameters, printing warnings once
/// (a local run lives with them; `esb validate` is the strict one).
#[cfg(feature = "docker")]
pub fn load_template(settings: &Settings) -> anyhow::Result<esb_template::Loaded> {
    let loaded = esb_app::template::load_template(settings)?;
    print_template_warnings(&loaded);
    Ok(loaded)
}

/// Prints the template's warnings and how many there were.
pub fn print_template_warnings(loaded: &esb_template::Loaded) {
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    if !loaded.warnings.is_empty() {
        eprintln!(
            "note: {} warning(s) above; running anyway (`esb validate` fails on them)",
            loaded.warnings.len()
        );
    }
}
