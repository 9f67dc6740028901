//! Golden tests of config error messages: each `ui/invalid/<name>.toml` must
//! fail to load with exactly the text in `ui/invalid/<name>.txt`.
//! Run with `BLESS=1` to write the expected files after a deliberate change.

use std::path::Path;

use portcullis::config::Config;

#[test]
fn invalid_configs_fail_with_the_expected_messages() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ui")
        .join("invalid");
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("ui/invalid exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "golden cases found: {cases:?}");
    let mut failures = Vec::new();
    for case in cases {
        let error = Config::load(&case).expect_err("an invalid config must not load");
        // Name the file relative to the test directory so the text is stable.
        let actual = error
            .to_string()
            .replace(&dir.display().to_string(), "ui/invalid");
        let expected_path = case.with_extension("txt");
        if bless {
            std::fs::write(&expected_path, format!("{actual}\n")).expect("write expected");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected.trim_end() != actual.trim_end() {
            failures.push(format!(
                "{}:\n--- expected\n{}\n--- actual\n{actual}\n",
                case.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
