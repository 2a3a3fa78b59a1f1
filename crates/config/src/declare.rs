//! The macro that turns the one table of settings in `lib.rs` into the
//! per-layer struct ([`crate::SettingsLayer`]), the resolved struct
//! ([`crate::Settings`]), the environment reader, the layer merge and the
//! documentation table ([`crate::SETTINGS`]). A new setting is one entry in
//! that table; nothing else lists the settings.

/// Declares every setting once. Each entry:
///
/// ```text
/// /// Doc line(s).
/// #[layer(serde attribute for the esb.toml field)]      (optional)
/// #[resolved(attribute for the resolved field)]        (optional)
/// name: LayerType => ResolvedType {
///     env: Some("ESB_NAME") | None,
///     read: env reader (crate::env::parse, ::duration, ::boolean, ::list, ::none),
///     flag: Some("--flag") | None,
///     default: "as documented" = |value: Option<LayerType>, merged: &SettingsLayer| -> ResolvedType,
///     merge: fn(higher, lower) -> merged          (optional; default: the higher one wins)
/// }
/// ```
macro_rules! declare_settings {
    ($(
        $(#[doc = $doc:literal])*
        $(#[layer($lattr:meta)])*
        $(#[resolved($rattr:meta)])*
        $name:ident : $lt:ty => $st:ty {
            env: $env:expr,
            read: $read:path,
            flag: $flag:expr,
            default: $default_doc:literal = $default:expr
            $(, merge: $merge:path)?
            $(,)?
        }
    )*) => {
        /// One layer of settings, every field optional. `esb.toml`, the
        /// environment and the flags each produce one; [`Settings::resolve`]
        /// merges them.
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "snake_case")]
        pub struct SettingsLayer {
            $(
                $(#[doc = $doc])*
                $(#[$lattr])*
                pub $name: Option<$lt>,
            )*
        }

        /// The resolved settings with every default applied.
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        pub struct Settings {
            $(
                $(#[doc = $doc])*
                #[doc = concat!("\n\nDefault: ", $default_doc, ".")]
                $(#[$rattr])*
                pub $name: $st,
            )*
        }

        impl SettingsLayer {
            /// This layer over `lower`: each field this layer sets wins.
            #[must_use]
            pub fn over(self, lower: SettingsLayer) -> SettingsLayer {
                SettingsLayer {
                    $(
                        $name: {
                            let merge: fn(Option<$lt>, Option<$lt>) -> Option<$lt> =
                                declare_settings!(@merge $($merge)?);
                            merge(self.$name, lower.$name)
                        },
                    )*
                }
            }

            /// The environment layer, from the `ESB_*` variables.
            pub fn from_env(env: &dyn $crate::Env) -> Result<SettingsLayer, $crate::ConfigError> {
                Ok(SettingsLayer {
                    $( $name: $read(env, $env)?, )*
                })
            }

            /// Applies the defaults (no checks).
            fn with_defaults(self) -> Settings {
                let merged = self.clone();
                Settings {
                    $(
                        $name: {
                            let default: fn(Option<$lt>, &SettingsLayer) -> $st = $default;
                            default(self.$name, &merged)
                        },
                    )*
                }
            }
        }

        /// Every setting with its sources and default, in documentation
        /// order (docs/configuration.md has one row per entry).
        pub const SETTINGS: &[SettingInfo] = &[
            $(
                SettingInfo {
                    key: stringify!($name),
                    env: $env,
                    flag: $flag,
                    default: $default_doc,
                    doc: concat!($($doc, " "),*),
                },
            )*
        ];
    };
    (@merge) => { $crate::declare::first };
    (@merge $merge:path) => { $merge };
}

pub(crate) use declare_settings;

/// Default merge: the higher layer's value when it has one.
pub(crate) fn first<T>(higher: Option<T>, lower: Option<T>) -> Option<T> {
    higher.or(lower)
}

/// Merge for maps: key by key, the higher layer winning.
pub(crate) fn by_key<K: Ord, V>(
    higher: Option<std::collections::BTreeMap<K, V>>,
    lower: Option<std::collections::BTreeMap<K, V>>,
) -> Option<std::collections::BTreeMap<K, V>> {
    match (higher, lower) {
        (Some(h), Some(mut l)) => {
            l.extend(h);
            Some(l)
        }
        (h, l) => h.or(l),
    }
}
