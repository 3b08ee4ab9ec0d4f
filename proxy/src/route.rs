//! Pure routing logic, no I/O: request matching and weighted choice.

mod mutate;
mod redirect;
mod rewrite;
pub use mutate::HeaderMutation;
pub use redirect::Redirect;
pub use rewrite::{PathRewrite, Rewrite, substitution};

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

/// How a string (a path, a header value) is matched.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    /// Whole path segments (xDS's `path_separated_prefix`, the Gateway API's PathPrefix): the
    /// path is the prefix, or the prefix and then `/`. The prefix does not end in `/`.
    Segments(Box<str>),
    /// Anchored at both ends: the whole value must match.
    Regex(Regex),
    /// Anything (for headers: the header is present).
    Any,
}

impl StringMatch {
    /// Compiles a regex so that it matches whole values, as Envoy's `safe_regex` does, within
    /// the bound the control plane validates with too
    /// ([`weft_core::matching::MAX_REGEX_SIZE`]); the error starts `invalid regex:`.
    pub fn regex(pattern: &str) -> Result<Self, weft_core::matching::RegexError> {
        weft_core::matching::whole_value_regex(pattern).map(StringMatch::Regex)
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == &**s,
            StringMatch::Prefix(p) => value.starts_with(&**p),
            StringMatch::Segments(p) => value
                .strip_prefix(&**p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            StringMatch::Regex(r) => r.is_match(value),
            StringMatch::Any => true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: StringMatch,
}

/// A query parameter match, on the value as sent (not percent-decoded); `Any` means the
/// parameter is present.
#[derive(Debug, Clone)]
pub struct QueryMatch {
    pub name: Box<str>,
    pub value: StringMatch,
}

/// What a request must look like for a route to take it. Every part given must match.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub path: Option<StringMatch>,
    pub method: Option<Method>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

impl RouteMatch {
    /// The match of a default route (every request), shared by all of them.
    pub fn any() -> std::sync::Arc<RouteMatch> {
        static ANY: std::sync::LazyLock<std::sync::Arc<RouteMatch>> =
            std::sync::LazyLock::new(Default::default);
        ANY.clone()
    }

    /// `self` behind an `Arc`. The matches nearly every route of a mesh has are one
    /// allocation each, shared by all of them: none at all ([`RouteMatch::any`]: xDS's path
    /// prefix `/`, which every service's default route has) and path prefix `/` alone (the
    /// table file's).
    pub fn shared(self) -> std::sync::Arc<RouteMatch> {
        static ROOT: std::sync::LazyLock<std::sync::Arc<RouteMatch>> =
            std::sync::LazyLock::new(|| {
                std::sync::Arc::new(RouteMatch {
                    path: Some(StringMatch::Prefix("/".into())),
                    ..RouteMatch::default()
                })
            });
        // Every field named: one added later must be considered here.
        let RouteMatch {
            path,
            method,
            headers,
            query,
        } = &self;
        let rest = method.is_none() && headers.is_empty() && query.is_empty();
        match path {
            None if rest => Self::any(),
            Some(StringMatch::Prefix(p)) if rest && &**p == "/" => ROOT.clone(),
            _ => std::sync::Arc::new(self),
        }
    }

    pub fn matches(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> bool {
        if !self.query.is_empty() {
            let q = query.unwrap_or("");
            // A parameter given more than once matches if any of its values does.
            let ok = self.query.iter().all(|m| {
                q.split('&').any(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    k == &*m.name && m.value.matches(v)
                })
            });
            if !ok {
                return false;
            }
        }
        if let Some(m) = &self.method
            && m != method
        {
            return false;
        }
        if let Some(p) = &self.path
            && !p.matches(path)
        {
            return false;
        }
        self.headers.iter().all(|h| {
            // A header given more than once matches if any of its values does.
            headers
                .get_all(&h.name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| h.value.matches(v)))
        })
    }
}

/// A weighted choice among a fixed set, picked in O(log n) without allocating.
#[derive(Debug, Clone)]
pub struct WeightedSplit<T> {
    /// `(cumulative weight up to and including this entry, entry)`; zero-weight entries are left out.
    entries: Vec<(u64, T)>,
}

impl<T> WeightedSplit<T> {
    pub fn new(items: impl IntoIterator<Item = (u32, T)>) -> Self {
        let mut total = 0u64;
        let entries = items
            .into_iter()
            .filter(|(w, _)| *w > 0)
            .map(|(w, t)| {
                total += u64::from(w);
                (total, t)
            })
            .collect();
        Self { entries }
    }

    pub fn total(&self) -> u64 {
        self.entries.last().map_or(0, |(c, _)| *c)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, t)| t)
    }

    /// Each entry with its own weight.
    pub fn weighted(&self) -> impl Iterator<Item = (u64, &T)> {
        let mut prev = 0;
        self.entries.iter().map(move |(c, t)| {
            let w = c - prev;
            prev = *c;
            (w, t)
        })
    }

    /// The index of the entry that `r` (any number; taken modulo the total weight) falls on.
    pub fn pick_index(&self, r: u64) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        if self.entries.len() == 1 {
            return Some(0);
        }
        let r = r % total;
        Some(self.entries.partition_point(|(c, _)| *c <= r))
    }

    /// The entry that `r` (any number; taken modulo the total weight) falls on.
    pub fn pick_with(&self, r: u64) -> Option<&T> {
        self.pick_index(r).and_then(|i| self.get(i))
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        self.entries.get(i).map(|(_, t)| t)
    }

    /// The weight of the entry at `i` (0 past the end).
    pub fn weight_at(&self, i: usize) -> u64 {
        let prev = i.checked_sub(1).map_or(0, |p| self.entries[p].0);
        self.entries.get(i).map_or(0, |(c, _)| c - prev)
    }

    /// A random entry, each chosen in proportion to its weight.
    pub fn pick(&self) -> Option<&T> {
        self.pick_with(fastrand::u64(..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_matches_are_one_allocation_and_the_others_their_own() {
        use std::sync::Arc;
        let any = || RouteMatch::default().shared();
        assert!(Arc::ptr_eq(&any(), &RouteMatch::any()));
        let root = || {
            RouteMatch {
                path: Some(StringMatch::Prefix("/".into())),
                ..RouteMatch::default()
            }
            .shared()
        };
        assert!(Arc::ptr_eq(&root(), &root()));
        assert!(!Arc::ptr_eq(&root(), &any()));
        // Anything more is a match of its own, kept as it was.
        let post = RouteMatch {
            path: Some(StringMatch::Prefix("/".into())),
            method: Some(Method::POST),
            ..RouteMatch::default()
        }
        .shared();
        assert!(!Arc::ptr_eq(&post, &root()));
        assert_eq!(post.method, Some(Method::POST));
        let header = RouteMatch {
            headers: vec![HeaderMatch {
                name: HeaderName::from_static("x-canary"),
                value: StringMatch::Any,
            }],
            ..RouteMatch::default()
        }
        .shared();
        assert!(!Arc::ptr_eq(&header, &any()));
        assert_eq!(header.headers.len(), 1);
        let api = RouteMatch {
            path: Some(StringMatch::Prefix("/api".into())),
            ..RouteMatch::default()
        }
        .shared();
        assert!(!Arc::ptr_eq(&api, &root()));
    }

    #[test]
    fn oversized_regexes_are_refused() {
        // A Unicode class repeated compiles to megabytes (about 50 KiB per `\w`): over the
        // bound, with a clear error.
        let err = StringMatch::regex(r"\w{100}").unwrap_err();
        assert!(err.to_string().contains("size limit"), "{err}");
        assert!(StringMatch::regex(r"/api/v[0-9]+/.*").is_ok());
    }

    #[test]
    fn string_matches() {
        assert!(StringMatch::Exact("/a".into()).matches("/a"));
        assert!(!StringMatch::Exact("/a".into()).matches("/ab"));
        assert!(StringMatch::Prefix("/api".into()).matches("/api/v1"));
        let r = StringMatch::regex("/users/[0-9]+").unwrap();
        assert!(r.matches("/users/42"));
        assert!(
            !r.matches("/users/42/x"),
            "regex must match the whole value"
        );
        assert!(StringMatch::regex("(").is_err());
    }

    #[test]
    fn route_match_needs_every_part() {
        let m = RouteMatch {
            path: Some(StringMatch::Prefix("/api".into())),
            method: Some(Method::POST),
            headers: vec![HeaderMatch {
                name: HeaderName::from_static("x-canary"),
                value: StringMatch::Exact("1".into()),
            }],
            query: vec![],
        };
        let mut h = HeaderMap::new();
        assert!(!m.matches(&Method::POST, "/api/x", None, &h));
        h.append("x-canary", "0".parse().unwrap());
        assert!(!m.matches(&Method::POST, "/api/x", None, &h));
        h.append("x-canary", "1".parse().unwrap());
        assert!(m.matches(&Method::POST, "/api/x", None, &h));
        assert!(!m.matches(&Method::GET, "/api/x", None, &h));
        assert!(!m.matches(&Method::POST, "/web", None, &h));
        assert!(RouteMatch::default().matches(&Method::GET, "/", None, &HeaderMap::new()));
    }

    #[test]
    fn query_parameters_match_on_their_values_as_sent() {
        let m = RouteMatch {
            query: vec![
                QueryMatch {
                    name: "version".into(),
                    value: StringMatch::Exact("v2".into()),
                },
                QueryMatch {
                    name: "debug".into(),
                    value: StringMatch::Any,
                },
            ],
            ..Default::default()
        };
        let h = HeaderMap::new();
        let get = |q: Option<&str>| m.matches(&Method::GET, "/", q, &h);
        assert!(get(Some("version=v2&debug")));
        assert!(get(Some("debug=&a=b&version=v1&version=v2")));
        assert!(!get(Some("version=v2")));
        assert!(!get(Some("version=v1&debug=1")));
        assert!(!get(Some("versionx=v2&debug")));
        assert!(!get(None));
        // Not percent-decoded.
        assert!(!get(Some("version=v%32&debug")));
    }

    #[test]
    fn weighted_split_follows_weights() {
        let s = WeightedSplit::new([(90, "stable"), (0, "never"), (10, "canary")]);
        assert_eq!(s.total(), 100);
        assert_eq!(s.len(), 2);
        assert_eq!(s.pick_with(0), Some(&"stable"));
        assert_eq!(s.pick_with(89), Some(&"stable"));
        assert_eq!(s.pick_with(90), Some(&"canary"));
        assert_eq!(s.pick_with(99), Some(&"canary"));
        assert_eq!(s.pick_with(100), Some(&"stable"));
        let canary = (0..100u64)
            .filter(|r| s.pick_with(*r) == Some(&"canary"))
            .count();
        assert_eq!(canary, 10);
        assert_eq!(WeightedSplit::<u8>::new([(0, 1)]).pick(), None);
    }
}
