//! [`SubjectIndex`]: which of many subject patterns match a subject, without trying each one.
//!
//! The daemon's event feed asks, for every event, which idle listeners want it. With
//! thousands of subscriptions, matching each pattern in turn would cost thousands of
//! comparisons per event; the index is a tree of tokens (`events` → `vm` → `*` ...), so a
//! lookup walks only the branches the subject's tokens can take: the literal token, `*`,
//! and `>`.

use std::collections::HashMap;

/// Patterns (NATS subjects with `*` and `>` wildcards) and what each stands for.
#[derive(Debug)]
pub struct SubjectIndex<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    literal: HashMap<String, Node<V>>,
    star: Option<Box<Node<V>>>,
    /// Values of patterns ending here with `>`: they match one or more further tokens.
    rest: Vec<V>,
    /// Values of patterns ending exactly here.
    here: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            literal: HashMap::new(),
            star: None,
            rest: Vec::new(),
            here: Vec::new(),
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.rest.is_empty()
            && self.here.is_empty()
    }
}

impl<V> Default for SubjectIndex<V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V: PartialEq> SubjectIndex<V> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many (pattern, value) pairs it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `pattern` (a valid subject pattern: `>` only as the last token).
    pub fn insert(&mut self, pattern: &str, value: V) {
        let mut node = &mut self.root;
        let mut tokens = pattern.split('.').peekable();
        while let Some(token) = tokens.next() {
            match token {
                ">" if tokens.peek().is_none() => {
                    node.rest.push(value);
                    self.len += 1;
                    return;
                }
                "*" => node = node.star.get_or_insert_with(Box::default),
                literal => node = node.literal.entry(literal.to_owned()).or_default(),
            }
        }
        node.here.push(value);
        self.len += 1;
    }

    /// Removes `value` from under `pattern`; whether it was there.
    pub fn remove(&mut self, pattern: &str, value: &V) -> bool {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let removed = Self::remove_from(&mut self.root, &tokens, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_from(node: &mut Node<V>, tokens: &[&str], value: &V) -> bool {
        let take = |list: &mut Vec<V>| match list.iter().position(|v| v == value) {
            Some(i) => {
                list.swap_remove(i);
                true
            }
            None => false,
        };
        match tokens {
            [] => take(&mut node.here),
            [">"] => take(&mut node.rest),
            ["*", tail @ ..] => {
                let Some(child) = node.star.as_deref_mut() else {
                    return false;
                };
                let removed = Self::remove_from(child, tail, value);
                if child.is_empty() {
                    node.star = None;
                }
                removed
            }
            [literal, tail @ ..] => {
                let Some(child) = node.literal.get_mut(*literal) else {
                    return false;
                };
                let removed = Self::remove_from(child, tail, value);
                if child.is_empty() {
                    node.literal.remove(*literal);
                }
                removed
            }
        }
    }

    /// Calls `found` with the value of every pattern matching `subject` (a subject without
    /// wildcards), once per (pattern, value) pair.
    pub fn for_each_match(&self, subject: &str, mut found: impl FnMut(&V)) {
        let tokens: Vec<&str> = subject.split('.').collect();
        Self::walk(&self.root, &tokens, &mut found);
    }

    fn walk(node: &Node<V>, tokens: &[&str], found: &mut impl FnMut(&V)) {
        let Some((token, tail)) = tokens.split_first() else {
            node.here.iter().for_each(&mut *found);
            return;
        };
        node.rest.iter().for_each(&mut *found);
        if let Some(child) = node.literal.get(*token) {
            Self::walk(child, tail, found);
        }
        if let Some(child) = node.star.as_deref() {
            Self::walk(child, tail, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::SubjectPattern;

    fn matches(index: &SubjectIndex<&'static str>, subject: &str) -> Vec<&'static str> {
        let mut found = Vec::new();
        index.for_each_match(subject, |v| found.push(*v));
        found.sort_unstable();
        found
    }

    #[test]
    fn a_subject_finds_exactly_the_patterns_that_match_it() {
        let patterns = [
            ("events.vm.started", "exact"),
            ("events.vm.*", "star"),
            ("events.>", "all"),
            ("events.*.stopped", "any-stopped"),
            ("events.vm.>", "vm-rest"),
            ("events.usb.*.attached", "usb"),
        ];
        let mut index = SubjectIndex::new();
        for (pattern, value) in patterns {
            index.insert(pattern, value);
        }
        assert_eq!(index.len(), patterns.len());
        for subject in [
            "events.vm.started",
            "events.vm.stopped",
            "events.vm.started.late",
            "events.usb.kbd.attached",
            "events.usb.kbd",
            "events",
            "other.vm.started",
            "events.billing.usage",
        ] {
            // The index agrees with matching every pattern one by one.
            let mut expected: Vec<&str> = patterns
                .iter()
                .filter(|(p, _)| SubjectPattern::parse(p).unwrap().matches(subject))
                .map(|(_, v)| *v)
                .collect();
            expected.sort_unstable();
            assert_eq!(matches(&index, subject), expected, "{subject}");
        }
        assert_eq!(
            matches(&index, "events.vm.started"),
            ["all", "exact", "star", "vm-rest"]
        );
    }

    #[test]
    fn a_removed_pattern_matches_no_more_and_leaves_the_others() {
        let mut index = SubjectIndex::new();
        index.insert("events.vm.*", "a");
        index.insert("events.vm.*", "b");
        index.insert("events.>", "c");
        assert!(index.remove("events.vm.*", &"a"));
        assert!(!index.remove("events.vm.*", &"a"), "already gone");
        assert!(!index.remove("events.usb.*", &"b"), "never there");
        assert_eq!(matches(&index, "events.vm.started"), ["b", "c"]);
        assert!(index.remove("events.vm.*", &"b"));
        assert!(index.remove("events.>", &"c"));
        assert!(index.is_empty());
        assert!(index.root.is_empty(), "empty branches are pruned");
        assert!(matches(&index, "events.vm.started").is_empty());
    }
}
