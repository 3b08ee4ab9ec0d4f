//! Headers a route changes (the Gateway API's header modifiers; xDS's `request_headers_to_add`
//! / `_remove` and their response twins): compiled once per configuration, applied to a
//! request before it is sent and to the upstream's response before it is relayed. Applying
//! allocates nothing of its own: names and values are shared, only the header map may grow.

use http::{HeaderMap, HeaderName, HeaderValue};

/// What one side's headers go through, in Envoy's order: removed, then set (replacing every
/// value), then added (beside the values there are).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderMutation {
    pub remove: Box<[HeaderName]>,
    pub set: Box<[(HeaderName, HeaderValue)]>,
    pub add: Box<[(HeaderName, HeaderValue)]>,
}

impl HeaderMutation {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }

    /// What `/config_dump` shows.
    pub fn describe(&self) -> serde_json::Value {
        let pairs = |l: &[(HeaderName, HeaderValue)]| {
            l.iter()
                .map(|(n, v)| {
                    serde_json::json!({"name": n.as_str(), "value": String::from_utf8_lossy(v.as_bytes())})
                })
                .collect::<Vec<_>>()
        };
        serde_json::json!({
            "remove": self.remove.iter().map(HeaderName::as_str).collect::<Vec<_>>(),
            "set": pairs(&self.set),
            "add": pairs(&self.add),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_removed_then_set_then_added() {
        let n = |s: &str| HeaderName::from_bytes(s.as_bytes()).unwrap();
        let v = |s: &'static str| HeaderValue::from_static(s);
        let m = HeaderMutation {
            remove: [n("x-remove"), n("x-set")].into(),
            set: [(n("x-set"), v("set")), (n("x-new"), v("new"))].into(),
            add: [(n("x-add"), v("added")), (n("x-set"), v("also"))].into(),
        };
        let mut h = HeaderMap::new();
        for (k, val) in [
            ("x-remove", "a"),
            ("x-set", "old-1"),
            ("x-set", "old-2"),
            ("x-add", "first"),
            ("x-other", "kept"),
        ] {
            h.append(n(k), HeaderValue::from_static(val));
        }
        m.apply(&mut h);
        let all = |k: &str| {
            h.get_all(k)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert!(all("x-remove").is_empty());
        assert_eq!(all("x-set"), ["set", "also"]);
        assert_eq!(all("x-new"), ["new"]);
        assert_eq!(all("x-add"), ["first", "added"]);
        assert_eq!(all("x-other"), ["kept"]);
    }
}
