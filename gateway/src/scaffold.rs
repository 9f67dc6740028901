//! `portcullis new NAME`: a plugin crate that builds and passes at once
//! (the SDK, a typed config, unit tests, a README with its config table, a
//! gateway config and a case file for `portcullis test`). The templates
//! are in `gateway/templates/plugin/`.

use std::path::{Path, PathBuf};

/// The files of a new plugin crate: where each goes, and its template.
const FILES: [(&str, &str); 6] = [
    (
        "Cargo.toml",
        include_str!("../templates/plugin/Cargo.toml.in"),
    ),
    ("src/lib.rs", include_str!("../templates/plugin/lib.rs.in")),
    (
        "README.md",
        include_str!("../templates/plugin/README.md.in"),
    ),
    (
        "portcullis.toml",
        include_str!("../templates/plugin/portcullis.toml.in"),
    ),
    (
        "cases.toml",
        include_str!("../templates/plugin/cases.toml.in"),
    ),
    (
        ".gitignore",
        include_str!("../templates/plugin/gitignore.in"),
    ),
];

/// The SDK of the source tree this binary was built from.
const BUILT_WITH_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk");

/// Names a crate may not have (Rust keywords and the standard crates).
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "alloc",
    "proc_macro",
];

/// What `portcullis new` made.
#[derive(Debug)]
pub struct Created {
    /// The crate's directory.
    pub directory: PathBuf,
    /// The plugin's name: its module's file name without `.wasm`, and the
    /// `name` routes give it.
    pub module: String,
}

/// Makes the crate `name` in `parent/name`, depending on the SDK at `sdk`
/// (by default the one of the source tree this binary was built from).
pub fn create(name: &str, parent: &Path, sdk: Option<&Path>) -> Result<Created, String> {
    check_name(name)?;
    let module = name.replace('-', "_");
    let type_name: String = module
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect();
    let sdk = find_sdk(sdk)?;
    let directory = parent.join(name);
    if directory.exists() {
        return Err(format!(
            "{} already exists: choose another name or remove it",
            directory.display()
        ));
    }
    let dependency = format!(
        "portcullis-sdk = {{ path = {} }}",
        toml::Value::String(sdk.display().to_string())
    );
    for (file, template) in FILES {
        let path = directory.join(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let text = template
            .replace("{{crate}}", name)
            .replace("{{module}}", &module)
            .replace("{{type}}", &type_name)
            .replace("{{sdk}}", &dependency);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(Created { directory, module })
}

/// A crate name Cargo takes that also makes a Rust type name: a lowercase
/// ASCII letter, then lowercase letters, digits, `-` or `_`.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !first_ok || !rest_ok || name.len() > 64 {
        return Err(format!(
            "`{name}`: a plugin name is a lowercase letter, then lowercase letters, digits, `-` or `_` (at most 64)"
        ));
    }
    if RESERVED.contains(&name.replace('-', "_").as_str()) {
        return Err(format!("`{name}` is reserved in Rust: choose another name"));
    }
    Ok(())
}

/// The SDK's directory, absolute.
fn find_sdk(given: Option<&Path>) -> Result<PathBuf, String> {
    let (path, said) = match given {
        Some(path) => (path.to_path_buf(), "--sdk"),
        None => (
            PathBuf::from(BUILT_WITH_SDK),
            "the source tree portcullis was built from",
        ),
    };
    let path = path.canonicalize().map_err(|e| {
        format!(
            "cannot find the Portcullis SDK at {} ({said}): {e}; give --sdk PATH, the plugin-sdk directory of a Portcullis checkout",
            path.display()
        )
    })?;
    if !path.join("Cargo.toml").is_file() {
        return Err(format!(
            "{} ({said}) has no Cargo.toml: --sdk is the plugin-sdk directory of a Portcullis checkout",
            path.display()
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cargo_and_rust_refuse_are_refused() {
        for bad in ["", "Upper", "1st", "with space", "dot.ted", "self", "test"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name("require-client-id").is_ok());
    }

    #[test]
    fn the_crate_is_written_with_its_names_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let created = create("client-gate", dir.path(), None).expect("created");
        assert_eq!(created.module, "client_gate");
        let lib = std::fs::read_to_string(created.directory.join("src/lib.rs")).expect("lib.rs");
        assert!(lib.contains("impl Policy for ClientGate {"), "{lib}");
        let manifest =
            std::fs::read_to_string(created.directory.join("Cargo.toml")).expect("Cargo.toml");
        assert!(manifest.contains("name = \"client-gate\""), "{manifest}");
        assert!(
            manifest.contains("portcullis-sdk = { path = \"/"),
            "{manifest}"
        );
        for (file, _) in FILES {
            let text = std::fs::read_to_string(created.directory.join(file)).expect(file);
            assert!(!text.contains("{{"), "{file}: {text}");
        }
        let again = create("client-gate", dir.path(), None).expect_err("exists");
        assert!(again.contains("already exists"), "{again}");
        let no_sdk = create("other", dir.path(), Some(dir.path())).expect_err("no sdk");
        assert!(no_sdk.contains("has no Cargo.toml"), "{no_sdk}");
    }
}
