//! The audit trail: one JSON line per change to the running policy
//! (module added, replaced, removed, refused; config reloaded or refused),
//! each carrying the SHA-256 of the line before it, so that an edit, a
//! removal or a reordering breaks the chain where it happened.
//!
//! A record (keys sorted, as written):
//!
//! ```json
//! {"cause":{"kind":"plugin"},"config_changes":[],"generation":7,
//!  "modules":[{"name":"key_auth","previous":"9f…","sha256":"3c…","signer":"43a2d13969f1e443","version":"0.1.1"}],
//!  "prev":"<SHA-256 of the previous line>","reason":null,"result":"applied","seq":12,
//!  "time":"2026-12-07T15:00:00.123Z"}
//! ```
//!
//! The first record's `prev` is 64 zeros. Values of the config never
//! appear, only the keys that changed, so no secret reaches the file.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The audit log of one gateway, appended to as the policy changes.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    state: Mutex<Head>,
}

/// Where the chain stands.
#[derive(Debug)]
struct Head {
    file: std::fs::File,
    /// The next record's sequence number.
    next: u64,
    /// SHA-256 of the last line.
    prev: String,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log at `path` and takes up its
    /// chain where its last line left it.
    pub fn open(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let (next, prev) = match std::fs::File::open(path) {
            Ok(file) => {
                let mut last = None;
                for line in std::io::BufReader::new(file).lines() {
                    let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    if !line.is_empty() {
                        last = Some(line);
                    }
                }
                match last {
                    Some(line) => {
                        let seq = serde_json::from_str::<Value>(&line)
                            .ok()
                            .and_then(|v| v.get("seq").and_then(Value::as_u64))
                            .ok_or_else(|| {
                                format!(
                                    "{}: the last line is not an audit record; run `portcullis audit verify`",
                                    path.display()
                                )
                            })?;
                        (seq + 1, line_hash(&line))
                    }
                    None => (1, GENESIS.to_owned()),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (1, GENESIS.to_owned()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new(Head { file, next, prev }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` (an object; `seq`, `prev` and `time` are set
    /// here), synced to disk before it returns. A write that fails is
    /// logged: the change it records has happened already.
    pub fn append(&self, mut record: Value) {
        let mut head = match self.state.lock() {
            Ok(head) => head,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(object) = record.as_object_mut() {
            object.insert("seq".into(), json!(head.next));
            object.insert("prev".into(), json!(head.prev));
            object.insert(
                "time".into(),
                json!(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()),
            );
        }
        let line = record.to_string();
        let written = head
            .file
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| head.file.sync_data());
        match written {
            Ok(()) => {
                head.next += 1;
                head.prev = line_hash(&line);
            }
            Err(e) => tracing::error!(
                target: "portcullis::audit",
                "cannot append to the audit log {}: {e}; this change is not recorded",
                self.path.display()
            ),
        }
    }
}

/// SHA-256 of one line, hex.
pub fn line_hash(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// What `portcullis audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// SHA-256 of the last line: pin it elsewhere to detect a change to
    /// the last record, which no later record covers yet.
    pub head: String,
}

/// Checks the chain of the log at `path`: every line a record, numbered
/// from 1, holding the hash of the line before. The first broken record
/// is named in the error.
pub fn verify(path: &Path) -> Result<Verified, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut prev = GENESIS.to_owned();
    let mut records = 0u64;
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|e| format!("line {number}: cannot read it: {e}"))?;
        let record: Value = serde_json::from_str(&line)
            .map_err(|e| format!("record {number} (line {number}) is not JSON: {e}"))?;
        let seq = record.get("seq").and_then(Value::as_u64);
        if seq != Some(records + 1) {
            return Err(format!(
                "record {number} (line {number}) has seq {}, expected {}: a record was removed, added or moved",
                seq.map_or("none".to_owned(), |s| s.to_string()),
                records + 1
            ));
        }
        let held = record.get("prev").and_then(Value::as_str).unwrap_or("");
        if held != prev {
            let what = if number == 1 {
                "the first record does not start the chain".to_owned()
            } else {
                format!(
                    "record {} (line {}) is not the one record {number} follows: it was altered, or record {number} was",
                    number - 1,
                    number - 1
                )
            };
            return Err(what);
        }
        prev = line_hash(&line);
        records += 1;
    }
    Ok(Verified {
        records,
        head: prev,
    })
}

/// Records of the log at `path` after sequence number `after`, at most
/// `limit`, oldest first; and whether more follow.
pub fn page(path: &Path, after: u64, limit: usize) -> Result<(Vec<Value>, bool), String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut records = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let Ok(record) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if record.get("seq").and_then(Value::as_u64).unwrap_or(0) <= after {
            continue;
        }
        if records.len() == limit {
            return Ok((records, true));
        }
        records.push(record);
    }
    Ok((records, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_verifies_and_a_changed_byte_is_found() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).expect("opens");
        for i in 0..5 {
            log.append(json!({"result": "applied", "generation": i}));
        }
        drop(log);
        // Reopened, the chain goes on.
        AuditLog::open(&path)
            .expect("reopens")
            .append(json!({"result": "rejected"}));
        let verified = verify(&path).expect("intact");
        assert_eq!(verified.records, 6);
        let text = std::fs::read_to_string(&path).expect("read");
        let (records, more) = page(&path, 2, 3).expect("page");
        assert_eq!(records.len(), 3);
        assert!(more);
        assert_eq!(records[0]["seq"], 3);
        // Change one byte of record 3.
        let altered = text.replacen("\"generation\":2", "\"generation\":9", 1);
        assert_ne!(altered, text);
        std::fs::write(&path, altered).expect("write");
        let err = verify(&path).expect_err("broken");
        assert!(err.starts_with("record 3 (line 3)"), "{err}");
        // Remove record 2.
        let lines: Vec<&str> = text.lines().collect();
        let removed: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        std::fs::write(&path, removed).expect("write");
        let err = verify(&path).expect_err("broken");
        assert!(err.starts_with("record 2 (line 2) has seq 3"), "{err}");
    }
}
