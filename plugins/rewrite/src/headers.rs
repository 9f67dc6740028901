//! Header rules, turned into the contract's remove/set/add lists.

use std::collections::{BTreeMap, BTreeSet};

/// The header rules of one direction, names lowercase. Their meaning is
/// "rename, then remove, then set, then add", each step seeing the result
/// of the previous one.
#[derive(Debug, Default)]
pub(crate) struct HeaderRules {
    /// New names by old name; the values move, replacing any the new name
    /// had. Nothing happens when the old header is absent.
    pub(crate) rename: BTreeMap<String, String>,
    /// Headers to remove.
    pub(crate) remove: BTreeSet<String>,
    /// Headers to set, replacing every value.
    pub(crate) set: BTreeMap<String, String>,
    /// Headers to add beside the existing values.
    pub(crate) add: BTreeMap<String, String>,
}

/// Header edits in the contract's order: remove, then set, then add.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct HeaderPlan {
    /// Headers to remove.
    pub(crate) remove: Vec<String>,
    /// Headers to set.
    pub(crate) set: Vec<(String, String)>,
    /// Headers to add.
    pub(crate) add: Vec<(String, String)>,
}

impl HeaderRules {
    /// Whether there is nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.rename.is_empty()
            && self.remove.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    /// The edits for a message whose header values `values(name)` returns
    /// (only the renamed headers are looked up).
    pub(crate) fn plan(&self, values: impl Fn(&str) -> Vec<String>) -> HeaderPlan {
        let mut plan = HeaderPlan::default();
        let mut moved = Vec::new();
        for (old, new) in &self.rename {
            let old_values = values(old);
            if old_values.is_empty() {
                continue;
            }
            plan.remove.push(old.clone());
            plan.remove.push(new.clone());
            // A later remove or set of the new name wins over the move.
            if !self.remove.contains(new) && !self.set.contains_key(new) {
                moved.extend(old_values.into_iter().map(|v| (new.clone(), v)));
            }
        }
        plan.remove.extend(self.remove.iter().cloned());
        plan.set
            .extend(self.set.iter().map(|(n, v)| (n.clone(), v.clone())));
        plan.add.extend(moved);
        plan.add
            .extend(self.add.iter().map(|(n, v)| (n.clone(), v.clone())));
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    fn rules() -> HeaderRules {
        HeaderRules {
            rename: [
                ("x-old", "x-new"),
                ("x-gone", "x-dropped"),
                ("x-a", "x-set"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect(),
            remove: ["x-debug", "x-dropped"]
                .into_iter()
                .map(String::from)
                .collect(),
            set: pairs(&[("x-set", "fixed")]).into_iter().collect(),
            add: pairs(&[("via", "portcullis")]).into_iter().collect(),
        }
    }

    #[test]
    fn renamed_values_move_in_order() {
        let plan = rules().plan(|name| match name {
            "x-old" => vec!["1".into(), "2".into()],
            _ => vec![],
        });
        assert_eq!(plan.remove, ["x-old", "x-new", "x-debug", "x-dropped"]);
        assert_eq!(plan.set, pairs(&[("x-set", "fixed")]));
        assert_eq!(
            plan.add,
            pairs(&[("x-new", "1"), ("x-new", "2"), ("via", "portcullis")])
        );
    }

    #[test]
    fn remove_and_set_of_the_new_name_win_over_a_rename() {
        let plan = rules().plan(|name| match name {
            "x-gone" | "x-a" => vec!["v".into()],
            _ => vec![],
        });
        assert_eq!(
            plan.remove,
            [
                "x-a",
                "x-set",
                "x-gone",
                "x-dropped",
                "x-debug",
                "x-dropped"
            ]
        );
        assert_eq!(plan.add, pairs(&[("via", "portcullis")]));
    }

    #[test]
    fn absent_headers_are_not_renamed() {
        let plan = rules().plan(|_| vec![]);
        assert_eq!(plan.remove, ["x-debug", "x-dropped"]);
        assert!(HeaderRules::default().plan(|_| vec![]) == HeaderPlan::default());
    }
}
