//! JSON request body rules: rename, remove, set to null, set.

use serde_json::{Map, Value};

use portcullis_plugin_kit::path::{JsonPath, Segment};

/// What to do with a body the rules cannot apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OnProblem {
    /// Send it on untouched.
    #[default]
    Pass,
    /// Answer the client with an error instead.
    Refuse,
}

/// The body rules, applied in the order: rename, remove, nullify, set (each
/// list in the order of its paths as text).
#[derive(Debug, Default)]
pub(crate) struct BodyRules {
    /// Members to rename: the path of the member and its new key (in the
    /// same object; an existing member with that key is replaced).
    pub(crate) rename: Vec<(JsonPath, String)>,
    /// Members or elements to remove.
    pub(crate) remove: Vec<JsonPath>,
    /// Members or elements to set to `null` where they exist.
    pub(crate) nullify: Vec<JsonPath>,
    /// Members or elements to set; missing objects on the way are created.
    pub(crate) set: Vec<(JsonPath, Value)>,
    /// What to do with a body over the gateway's cap.
    pub(crate) on_too_large: OnProblem,
    /// What to do with a body that is not JSON.
    pub(crate) on_not_json: OnProblem,
}

impl BodyRules {
    /// Whether there is nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.rename.is_empty()
            && self.remove.is_empty()
            && self.nullify.is_empty()
            && self.set.is_empty()
    }

    /// Applies every rule to `doc`; true if anything changed.
    pub(crate) fn apply(&self, doc: &mut Value) -> bool {
        let mut changed = false;
        for (path, new_key) in &self.rename {
            changed |= edit(doc, path, &mut |parent, last| rename(parent, last, new_key));
        }
        for path in &self.remove {
            changed |= edit(doc, path, &mut remove);
        }
        for path in &self.nullify {
            changed |= edit(doc, path, &mut nullify);
        }
        for (path, value) in &self.set {
            changed |= set(doc, path.segments(), value);
        }
        changed
    }
}

/// Calls `f(parent, last)` for every container the path's steps but the
/// last lead to; true if any call changed something.
fn edit(doc: &mut Value, path: &JsonPath, f: &mut dyn FnMut(&mut Value, &Segment) -> bool) -> bool {
    let Some((last, parents)) = path.segments().split_last() else {
        return false;
    };
    let mut changed = false;
    each(doc, parents, &mut |parent| changed |= f(parent, last));
    changed
}

/// Calls `f` on every value `steps` lead to from `value`.
fn each(value: &mut Value, steps: &[Segment], f: &mut dyn FnMut(&mut Value)) {
    let Some((step, rest)) = steps.split_first() else {
        f(value);
        return;
    };
    match (step, value) {
        (Segment::Key(key), Value::Object(map)) => {
            if let Some(child) = map.get_mut(key) {
                each(child, rest, f);
            }
        }
        (Segment::AnyKey, Value::Object(map)) => {
            for child in map.values_mut() {
                each(child, rest, f);
            }
        }
        (Segment::Index(i), Value::Array(items)) => {
            if let Some(child) = items.get_mut(*i) {
                each(child, rest, f);
            }
        }
        (Segment::AnyIndex, Value::Array(items)) => {
            for child in items {
                each(child, rest, f);
            }
        }
        _ => {}
    }
}

fn rename(parent: &mut Value, last: &Segment, new_key: &str) -> bool {
    let (Segment::Key(key), Value::Object(map)) = (last, parent) else {
        return false;
    };
    match map.remove(key) {
        Some(value) => {
            map.insert(new_key.to_owned(), value);
            true
        }
        None => false,
    }
}

fn remove(parent: &mut Value, last: &Segment) -> bool {
    match (last, parent) {
        (Segment::Key(key), Value::Object(map)) => map.remove(key).is_some(),
        (Segment::AnyKey, Value::Object(map)) => {
            let had = !map.is_empty();
            map.clear();
            had
        }
        (Segment::Index(i), Value::Array(items)) if *i < items.len() => {
            items.remove(*i);
            true
        }
        (Segment::AnyIndex, Value::Array(items)) => {
            let had = !items.is_empty();
            items.clear();
            had
        }
        _ => false,
    }
}

fn nullify(parent: &mut Value, last: &Segment) -> bool {
    let mut changed = false;
    let mut null = |v: &mut Value| {
        if !v.is_null() {
            *v = Value::Null;
            changed = true;
        }
    };
    match (last, parent) {
        (Segment::Key(key), Value::Object(map)) => map.get_mut(key).into_iter().for_each(&mut null),
        (Segment::AnyKey, Value::Object(map)) => map.values_mut().for_each(&mut null),
        (Segment::Index(i), Value::Array(items)) => {
            items.get_mut(*i).into_iter().for_each(&mut null)
        }
        (Segment::AnyIndex, Value::Array(items)) => items.iter_mut().for_each(&mut null),
        _ => {}
    }
    changed
}

/// Sets the value at `steps`. A missing member is created, with objects
/// for the missing keys after it, when the rest of the way is keys only; a
/// step through anything else (an index past the end, a string where an
/// object was expected) sets nothing.
fn set(value: &mut Value, steps: &[Segment], new: &Value) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        if value == new {
            return false;
        }
        *value = new.clone();
        return true;
    };
    match (step, value) {
        (Segment::Key(key), Value::Object(map)) => {
            if !map.contains_key(key) {
                // Created only when the rest of the way is keys, so that a
                // creation always ends with the value set.
                if !rest.iter().all(|s| matches!(s, Segment::Key(_))) {
                    return false;
                }
                let mut created = new.clone();
                for step in rest.iter().rev() {
                    if let Segment::Key(k) = step {
                        let mut object = Map::new();
                        object.insert(k.clone(), created);
                        created = Value::Object(object);
                    }
                }
                map.insert(key.clone(), created);
                return true;
            }
            match map.get_mut(key) {
                Some(child) => set(child, rest, new),
                None => false,
            }
        }
        (Segment::AnyKey, Value::Object(map)) => {
            let mut changed = false;
            for child in map.values_mut() {
                changed |= set(child, rest, new);
            }
            changed
        }
        (Segment::Index(i), Value::Array(items)) => match items.get_mut(*i) {
            Some(child) => set(child, rest, new),
            None => false,
        },
        (Segment::AnyIndex, Value::Array(items)) => {
            let mut changed = false;
            for child in items {
                changed |= set(child, rest, new);
            }
            changed
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn path(text: &str) -> JsonPath {
        JsonPath::parse(text).expect("valid path")
    }

    fn doc() -> Value {
        json!({
            "user": { "email": "a@example.com", "password": "hunter2", "ssn": "123" },
            "items": [ { "sku": "A", "secret": 1 }, { "sku": "B", "secret": 2 } ],
            "note": null
        })
    }

    #[test]
    fn rename_moves_a_member_within_its_object() {
        let rules = BodyRules {
            rename: vec![
                (path("user.email"), "mail".into()),
                (path("items[*].sku"), "code".into()),
                (path("user.absent"), "x".into()),
            ],
            ..BodyRules::default()
        };
        let mut d = doc();
        assert!(rules.apply(&mut d));
        assert_eq!(d["user"]["mail"], "a@example.com");
        assert!(d["user"].get("email").is_none());
        assert_eq!(d["items"][1]["code"], "B");
        assert!(d["user"].get("x").is_none());
    }

    #[test]
    fn remove_and_nullify() {
        let rules = BodyRules {
            remove: vec![
                path("user.password"),
                path("items[*].secret"),
                path("items[5]"),
            ],
            nullify: vec![path("$.user.ssn"), path("note"), path("missing.deep")],
            ..BodyRules::default()
        };
        let mut d = doc();
        assert!(rules.apply(&mut d));
        assert_eq!(
            d,
            json!({
                "user": { "email": "a@example.com", "ssn": null },
                "items": [ { "sku": "A" }, { "sku": "B" } ],
                "note": null
            })
        );
        assert!(!rules.apply(&mut d), "a second pass changes nothing");
    }

    #[test]
    fn remove_by_index_and_wildcards() {
        let rules = BodyRules {
            remove: vec![path("items[0]"), path("user.*")],
            ..BodyRules::default()
        };
        let mut d = doc();
        assert!(rules.apply(&mut d));
        assert_eq!(d["items"], json!([{ "sku": "B", "secret": 2 }]));
        assert_eq!(d["user"], json!({}));
    }

    #[test]
    fn set_creates_missing_objects_but_not_arrays() {
        let rules = BodyRules {
            set: vec![
                (path("meta.source.name"), json!("gateway")),
                (path("items[*].checked"), json!(true)),
                (path("items[9].x"), json!(1)),
                (path("user.email.deeper"), json!(1)),
                (path("made[0]"), json!(1)),
                (path("extra"), Value::Null),
            ],
            ..BodyRules::default()
        };
        let mut d = doc();
        assert!(rules.apply(&mut d));
        assert_eq!(d["meta"], json!({ "source": { "name": "gateway" } }));
        assert_eq!(d["items"][0]["checked"], true);
        assert_eq!(d["items"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            d["user"]["email"], "a@example.com",
            "a string is not an object"
        );
        assert!(d.get("made").is_none(), "arrays are not created");
        assert_eq!(d.get("extra"), Some(&Value::Null));
        assert!(
            !rules.apply(&mut d),
            "setting the same values again changes nothing"
        );
    }

    #[test]
    fn non_objects_are_left_alone() {
        let rules = BodyRules {
            remove: vec![path("a")],
            set: vec![(path("b"), json!(1))],
            ..BodyRules::default()
        };
        for mut d in [json!([1, 2]), json!("text"), json!(3), Value::Null] {
            let before = d.clone();
            assert!(!rules.apply(&mut d));
            assert_eq!(d, before);
        }
    }
}
