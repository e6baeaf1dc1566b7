//! Label selectors, with exactly the semantics Kubernetes gives `metav1.LabelSelector`.
//!
//! `matchLabels` and every `matchExpressions` entry must all hold. An empty selector (`{}`)
//! selects everything. `In` needs the key present with one of the values; `NotIn` holds when the
//! key is absent or its value is not listed; `Exists`/`DoesNotExist` test presence only.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// A selector that Kubernetes itself would reject.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("matchExpressions[{index}]: operator {operator:?} is not one of In, NotIn, Exists, DoesNotExist")]
    UnknownOperator { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator} needs at least one value")]
    MissingValues { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator} takes no values")]
    UnexpectedValues { index: usize, operator: String },
}

impl SelectorError {
    /// Path of the offending entry, relative to the selector.
    pub fn field(&self) -> String {
        let (Self::UnknownOperator { index, .. }
        | Self::MissingValues { index, .. }
        | Self::UnexpectedValues { index, .. }) = self;
        format!("matchExpressions[{index}]")
    }
}

/// Checks that every requirement is well formed.
pub fn validate(selector: &LabelSelector) -> Result<(), SelectorError> {
    for (index, requirement) in expressions(selector).iter().enumerate() {
        let has_values = requirement.values.as_ref().is_some_and(|v| !v.is_empty());
        let operator = requirement.operator.as_str();
        match operator {
            "In" | "NotIn" if !has_values => {
                return Err(SelectorError::MissingValues {
                    index,
                    operator: operator.to_owned(),
                });
            }
            "Exists" | "DoesNotExist" if has_values => {
                return Err(SelectorError::UnexpectedValues {
                    index,
                    operator: operator.to_owned(),
                });
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => {
                return Err(SelectorError::UnknownOperator {
                    index,
                    operator: operator.to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// An object's labels, however they are kept.
pub trait Labels {
    /// The value of label `key`.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// Labels in a sorted boxed slice: a third of a `BTreeMap`'s memory for the handful of labels an
/// object has, for caches that hold thousands of objects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSet(Box<[(Box<str>, Box<str>)]>);

impl LabelSet {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The labels as the API types hold them (`None` when there are none).
    pub fn to_map(&self) -> Option<BTreeMap<String, String>> {
        (!self.0.is_empty()).then(|| self.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }
}

impl From<&BTreeMap<String, String>> for LabelSet {
    fn from(map: &BTreeMap<String, String>) -> Self {
        // A BTreeMap iterates in key order: the slice is sorted.
        LabelSet(
            map.iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
        )
    }
}

impl Labels for LabelSet {
    fn label(&self, key: &str) -> Option<&str> {
        let found = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        self.0.get(found).map(|(_, v)| &**v)
    }
}

/// Whether `selector` selects an object with `labels`. An invalid selector selects nothing.
pub fn matches(selector: &LabelSelector, labels: &(impl Labels + ?Sized)) -> Result<bool, SelectorError> {
    validate(selector)?;
    let labels_hold = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.label(key) == Some(value.as_str()));
    Ok(labels_hold && expressions(selector).iter().all(|r| requirement_holds(r, labels)))
}

fn requirement_holds(requirement: &LabelSelectorRequirement, labels: &(impl Labels + ?Sized)) -> bool {
    let value = labels.label(&requirement.key);
    let listed = |v: &str| {
        requirement
            .values
            .iter()
            .flatten()
            .any(|candidate| candidate == v)
    };
    match requirement.operator.as_str() {
        "In" => value.is_some_and(listed),
        "NotIn" => !value.is_some_and(listed),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

fn expressions(selector: &LabelSelector) -> &[LabelSelectorRequirement] {
    selector.match_expressions.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn selector(match_labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    #[test]
    fn empty_selector_selects_everything() {
        let s = LabelSelector::default();
        assert!(matches(&s, &labels(&[])).unwrap());
        assert!(matches(&s, &labels(&[("app", "web")])).unwrap());
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = selector(&[("app", "web"), ("tier", "front")], vec![]);
        assert!(matches(&s, &labels(&[("app", "web"), ("tier", "front"), ("x", "y")])).unwrap());
        assert!(!matches(&s, &labels(&[("app", "web")])).unwrap());
        assert!(!matches(&s, &labels(&[("app", "web"), ("tier", "back")])).unwrap());
    }

    #[test]
    fn operators_follow_kubernetes() {
        let l = labels(&[("env", "prod")]);
        let empty = labels(&[]);
        let check = |e: LabelSelectorRequirement, l: &BTreeMap<String, String>| {
            matches(&selector(&[], vec![e]), l).unwrap()
        };
        assert!(check(expr("env", "In", &["prod", "staging"]), &l));
        assert!(!check(expr("env", "In", &["staging"]), &l));
        assert!(!check(expr("env", "In", &["prod"]), &empty));
        assert!(!check(expr("env", "NotIn", &["prod"]), &l));
        assert!(check(expr("env", "NotIn", &["staging"]), &l));
        assert!(
            check(expr("env", "NotIn", &["prod"]), &empty),
            "NotIn holds when the key is absent"
        );
        assert!(check(expr("env", "Exists", &[]), &l));
        assert!(!check(expr("env", "Exists", &[]), &empty));
        assert!(check(expr("env", "DoesNotExist", &[]), &empty));
        assert!(!check(expr("env", "DoesNotExist", &[]), &l));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = selector(&[("app", "web")], vec![expr("env", "In", &["prod"])]);
        assert!(matches(&s, &labels(&[("app", "web"), ("env", "prod")])).unwrap());
        assert!(!matches(&s, &labels(&[("app", "web"), ("env", "dev")])).unwrap());
        assert!(!matches(&s, &labels(&[("app", "api"), ("env", "prod")])).unwrap());
    }

    #[test]
    fn a_label_set_answers_like_a_map() {
        let map = labels(&[("app", "web"), ("tier", "front"), ("env", "prod")]);
        let set = LabelSet::from(&map);
        for key in ["app", "tier", "env", "absent", ""] {
            assert_eq!(set.label(key), map.label(key), "{key}");
        }
        assert_eq!(set.to_map(), Some(map.clone()));
        assert_eq!(LabelSet::default().to_map(), None);
        let s = selector(&[("app", "web")], vec![expr("env", "NotIn", &["dev"])]);
        assert_eq!(matches(&s, &set), matches(&s, &map));
    }

    #[test]
    fn malformed_requirements_are_errors() {
        let l = labels(&[]);
        let err = |e| matches(&selector(&[], vec![e]), &l).unwrap_err();
        assert!(matches!(
            err(expr("a", "In", &[])),
            SelectorError::MissingValues { .. }
        ));
        assert!(matches!(
            err(expr("a", "NotIn", &[])),
            SelectorError::MissingValues { .. }
        ));
        assert!(matches!(
            err(expr("a", "Exists", &["x"])),
            SelectorError::UnexpectedValues { .. }
        ));
        assert!(matches!(
            err(expr("a", "DoesNotExist", &["x"])),
            SelectorError::UnexpectedValues { .. }
        ));
        let unknown = err(expr("a", "Equals", &["x"]));
        assert_eq!(unknown.field(), "matchExpressions[0]");
        assert!(unknown.to_string().contains("\"Equals\""));
    }
}
