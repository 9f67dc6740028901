//! What validating a plugin's configuration produces.

/// A plugin built from an accepted configuration, with the warnings its
/// validation raised (things to log, such as a weak secret, that do not
/// make the configuration wrong).
///
/// A plugin's `Config::build` returns `Result<Built<Plugin>, String>`, which
/// unit tests inspect on the host; `Policy::new` logs the warnings and keeps
/// the plugin:
///
/// ```
/// use portcullis_plugin_kit::config::Built;
///
/// let built = Built {
///     plugin: "the plugin",
///     warnings: vec!["keys[0].secret: shorter than 32 bytes".to_owned()],
/// };
/// let mut logged = Vec::new();
/// // In a plugin: `built.log_warnings(portcullis_sdk::log::warn)`.
/// let plugin = built.log_warnings(|warning| logged.push(warning.to_owned()));
/// assert_eq!(plugin, "the plugin");
/// assert_eq!(logged, ["keys[0].secret: shorter than 32 bytes"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built<T> {
    /// The plugin, ready to serve requests.
    pub plugin: T,
    /// Things to log at `warn`, each naming its key; the configuration is
    /// accepted.
    pub warnings: Vec<String>,
}

impl<T> Built<T> {
    /// Hands every warning, in order, to `warn` and returns the plugin.
    pub fn log_warnings(self, mut warn: impl FnMut(&str)) -> T {
        for warning in &self.warnings {
            warn(warning);
        }
        self.plugin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_handed_over_in_order() {
        let built = Built {
            plugin: 7,
            warnings: vec!["a: first".to_owned(), "b: second".to_owned()],
        };
        let mut seen = Vec::new();
        assert_eq!(built.log_warnings(|w| seen.push(w.to_owned())), 7);
        assert_eq!(seen, ["a: first", "b: second"]);

        let quiet = Built {
            plugin: (),
            warnings: Vec::new(),
        };
        quiet.log_warnings(|w| panic!("no warning expected, got {w}"));
    }
}
