//! The stamp the SDK's `#[policy]` puts in every plugin module: a custom
//! section `portcullis-plugin` holding `name=<crate>\nversion=<semver>\n`.
//! The gateway shows it next to the module's SHA-256, and signatures cover
//! the version.

use wasmparser::{Parser, Payload};

/// The custom section's name (the SDK's `STAMP_SECTION`).
pub const SECTION: &str = "portcullis-plugin";

/// The longest name or version kept.
const MAX_FIELD: usize = 128;

/// What a module says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The plugin crate's name (`portcullis-plugin-key-auth`).
    pub name: String,
    /// Its version (`0.1.0`).
    pub version: String,
}

/// The stamp of `module` (a component or a core module, the stamp being
/// in any module inside it), if it has a well-formed one: both fields,
/// each 1 to 128 visible ASCII characters.
pub fn read(module: &[u8]) -> Option<Stamp> {
    for payload in Parser::new(0).parse_all(module) {
        let Ok(Payload::CustomSection(section)) = payload else {
            if payload.is_err() {
                return None;
            }
            continue;
        };
        if section.name() != SECTION {
            continue;
        }
        let text = std::str::from_utf8(section.data()).ok()?;
        let (mut name, mut version) = (None, None);
        for line in text.lines() {
            match line.split_once('=') {
                Some(("name", value)) => name = Some(value),
                Some(("version", value)) => version = Some(value),
                _ => {}
            }
        }
        let field = |value: Option<&str>| {
            value
                .filter(|v| {
                    !v.is_empty() && v.len() <= MAX_FIELD && v.bytes().all(|b| b.is_ascii_graphic())
                })
                .map(str::to_owned)
        };
        return Some(Stamp {
            name: field(name)?,
            version: field(version)?,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module with one custom section.
    fn module_with(name: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = b"\0asm\x01\0\0\0".to_vec();
        let mut body = Vec::new();
        body.push(u8::try_from(name.len()).expect("short"));
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(data);
        bytes.push(0);
        bytes.push(u8::try_from(body.len()).expect("short"));
        bytes.extend_from_slice(&body);
        bytes
    }

    #[test]
    fn a_stamp_is_read_and_a_bad_one_is_not() {
        let good = module_with(SECTION, b"name=portcullis-plugin-key-auth\nversion=0.3.1\n");
        assert_eq!(
            read(&good),
            Some(Stamp {
                name: "portcullis-plugin-key-auth".into(),
                version: "0.3.1".into()
            })
        );
        assert_eq!(read(&module_with("other", b"name=a\nversion=1\n")), None);
        assert_eq!(read(&module_with(SECTION, b"name=a\n")), None);
        assert_eq!(read(&module_with(SECTION, b"name=a b\nversion=1\n")), None);
        assert_eq!(read(b"not wasm"), None);
    }
}
