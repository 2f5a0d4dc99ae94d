//! Routes: a verb plus a pattern of static segments and `{name}` captures.
//!
//! Resources are matched byte for byte, segment by segment (split on `/`). A
//! capture matches one non-empty segment. When several patterns match, the
//! most specific wins: at the first segment where they differ, a static
//! segment beats a capture. `/users/me` is served before `/users/{id}`.

use std::fmt;
use std::sync::Arc;

use korv_proto::Verb;

use crate::handler::BoxedHandler;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Static(String),
    Capture(String),
}

/// A parsed route pattern.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A pattern that cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The pattern is malformed.
    #[error("invalid route pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The same verb and pattern (captures compared by position, not name) was
    /// registered before.
    #[error("route conflict: {verb} {pattern:?} is already registered (as {existing:?})")]
    Conflict {
        /// The verb.
        verb: Verb,
        /// The pattern being registered.
        pattern: String,
        /// The equivalent pattern registered earlier.
        existing: String,
    },
}

impl Pattern {
    pub(crate) fn parse(text: &str) -> Result<Pattern, RouteError> {
        let invalid = |reason: &str| RouteError::InvalidPattern {
            pattern: text.to_owned(),
            reason: reason.to_owned(),
        };
        let Some(rest) = text.strip_prefix('/') else {
            return Err(invalid("it must start with '/'"));
        };
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for part in rest.split('/') {
            if let Some(inner) = part.strip_prefix('{') {
                let Some(name) = inner.strip_suffix('}') else {
                    return Err(invalid("a capture must be a whole segment, like {id}"));
                };
                if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    return Err(invalid(
                        "a capture's name must be letters, digits or '_', like {user_id}",
                    ));
                }
                if names.contains(&name) {
                    return Err(invalid("the same capture name appears twice"));
                }
                names.push(name);
                segments.push(Segment::Capture(name.to_owned()));
            } else if part.contains(['{', '}']) {
                return Err(invalid("a capture must be a whole segment, like {id}"));
            } else {
                segments.push(Segment::Static(part.to_owned()));
            }
        }
        Ok(Pattern {
            text: text.to_owned(),
            segments,
        })
    }

    /// Same shape: same statics at the same places, captures at the same places.
    fn same_shape(&self, other: &Pattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Static(a), Segment::Static(b)) => a == b,
                    (Segment::Capture(_), Segment::Capture(_)) => true,
                    _ => false,
                })
    }

    /// Matches a resource; on success returns the captures.
    fn matches(&self, resource: &str) -> Option<Params> {
        let rest = resource.strip_prefix('/')?;
        let mut params = Params::default();
        let mut parts = rest.split('/');
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Static(s) if s == part => {}
                Segment::Static(_) => return None,
                Segment::Capture(_) if part.is_empty() => return None,
                Segment::Capture(name) => params.0.push((name.clone(), part.to_owned())),
            }
        }
        parts.next().is_none().then_some(params)
    }

    /// Specificity key: statics before captures, segment by segment.
    fn specificity(&self) -> Vec<bool> {
        self.segments
            .iter()
            .map(|s| matches!(s, Segment::Static(_)))
            .collect()
    }
}

/// The captures of a matched route, in pattern order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// The value captured for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every capture, as (name, value) pairs in pattern order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Whether there are no captures.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

struct Route<S> {
    pattern: Pattern,
    handlers: [Option<Arc<BoxedHandler<S>>>; 4],
}

/// What routing a request found.
pub(crate) enum Routed<S> {
    Found(Arc<BoxedHandler<S>>, Params),
    /// A route matches but not for this verb: the verbs that do.
    NotAllowed(Vec<Verb>),
    NotFound,
}

/// The routing table.
pub(crate) struct Router<S> {
    routes: Vec<Route<S>>,
    fallback: Option<Arc<BoxedHandler<S>>>,
}

impl<S> Default for Router<S> {
    fn default() -> Self {
        Router {
            routes: Vec::new(),
            fallback: None,
        }
    }
}

fn verb_index(verb: Verb) -> usize {
    match verb {
        Verb::Get => 0,
        Verb::Store => 1,
        Verb::Update => 2,
        Verb::Delete => 3,
    }
}

impl<S> Router<S> {
    pub(crate) fn add(
        &mut self,
        verb: Verb,
        pattern: &str,
        handler: BoxedHandler<S>,
    ) -> Result<(), RouteError> {
        let pattern = Pattern::parse(pattern)?;
        let handler = Some(Arc::new(handler));
        // Captures are compared by position: `/u/{id}` and `/u/{name}` are one route.
        if let Some(existing) = self
            .routes
            .iter()
            .find(|r| r.pattern.same_shape(&pattern) && r.handlers[verb_index(verb)].is_some())
        {
            return Err(RouteError::Conflict {
                verb,
                pattern: pattern.text,
                existing: existing.pattern.text.clone(),
            });
        }
        if let Some(route) = self.routes.iter_mut().find(|r| r.pattern == pattern) {
            route.handlers[verb_index(verb)] = handler;
            return Ok(());
        }
        let mut handlers = [None, None, None, None];
        handlers[verb_index(verb)] = handler;
        self.routes.push(Route { pattern, handlers });
        // Most specific first, so the first match with the verb is the best one.
        self.routes
            .sort_by_key(|r| std::cmp::Reverse(r.pattern.specificity()));
        Ok(())
    }

    pub(crate) fn set_fallback(&mut self, handler: BoxedHandler<S>) {
        self.fallback = Some(Arc::new(handler));
    }

    pub(crate) fn route(&self, verb: Verb, resource: &str) -> Routed<S> {
        let mut allowed = [false; 4];
        let mut any = false;
        for route in &self.routes {
            let Some(params) = route.pattern.matches(resource) else {
                continue;
            };
            any = true;
            if let Some(handler) = &route.handlers[verb_index(verb)] {
                return Routed::Found(Arc::clone(handler), params);
            }
            for (slot, present) in allowed.iter_mut().zip(&route.handlers) {
                *slot |= present.is_some();
            }
        }
        if any {
            let verbs = Verb::ALL
                .into_iter()
                .zip(allowed)
                .filter_map(|(v, ok)| ok.then_some(v))
                .collect();
            return Routed::NotAllowed(verbs);
        }
        match &self.fallback {
            Some(handler) => Routed::Found(Arc::clone(handler), Params::default()),
            None => Routed::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &str) -> Pattern {
        Pattern::parse(p).unwrap()
    }

    #[test]
    fn static_and_capture_segments_match() {
        let p = parse("/users/{id}/posts/{post}");
        let params = p.matches("/users/42/posts/x-1").unwrap();
        assert_eq!(params.get("id"), Some("42"));
        assert_eq!(params.get("post"), Some("x-1"));
        assert!(p.matches("/users/42/posts").is_none());
        assert!(p.matches("/users/42/posts/x/y").is_none());
        assert!(
            p.matches("/users//posts/x").is_none(),
            "captures are non-empty"
        );
    }

    #[test]
    fn matching_is_byte_for_byte() {
        let p = parse("/hello");
        assert!(p.matches("/hello").is_some());
        assert!(p.matches("/hello/").is_none());
        assert!(p.matches("/Hello").is_none());
        assert!(p.matches("/hello?x=1").is_none());
        assert!(parse("/").matches("/").is_some());
    }

    #[test]
    fn malformed_patterns_are_refused_with_a_reason() {
        for bad in ["hello", "/a/{", "/a/{}", "/a/x{id}", "/{a}/{a}", "/{a-b}"] {
            let err = Pattern::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
