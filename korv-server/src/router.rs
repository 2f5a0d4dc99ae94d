//! The routing table: patterns of static segments, `{name}` captures and a
//! final `{*name}` capture of the rest, each with a handler per verb and the
//! authorization rules of the route, matched against a request's verb and
//! resource.
//!
//! Resources are matched byte for byte, segment by segment (split on `/`). A
//! capture matches one non-empty segment; a rest capture matches one or more
//! segments, slashes included. When several patterns match, the most
//! specific wins: at the first segment where they differ, a static segment
//! beats a capture, which beats a rest capture. `/users/me` is served before
//! `/users/{id}`, and that before `/users/{*path}`.

use std::fmt;
use std::sync::Arc;

use korv_proto::Verb;

use crate::authorize::Rule;
use crate::handler::BoxedHandler;
use crate::request::Params;
use crate::routing::{MethodRouter, RouteError};
use crate::watch::BoxedWatchHandler;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Static(String),
    Capture(String),
    /// `{*name}`, the last segment: the rest of the resource.
    Rest(String),
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
        let parts: Vec<&str> = rest.split('/').collect();
        for (index, part) in parts.iter().copied().enumerate() {
            if let Some(inner) = part.strip_prefix('{') {
                let Some(name) = inner.strip_suffix('}') else {
                    return Err(invalid("a capture must be a whole segment, like {id}"));
                };
                let (rest_capture, name) = match name.strip_prefix('*') {
                    Some(name) => (true, name),
                    None => (false, name),
                };
                if rest_capture && index + 1 != parts.len() {
                    return Err(invalid("a {*rest} capture must be the last segment"));
                }
                if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    return Err(invalid(
                        "a capture's name must be letters, digits or '_', like {user_id}",
                    ));
                }
                if names.contains(&name) {
                    return Err(invalid("the same capture name appears twice"));
                }
                names.push(name);
                segments.push(if rest_capture {
                    Segment::Rest(name.to_owned())
                } else {
                    Segment::Capture(name.to_owned())
                });
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
                    (Segment::Capture(_), Segment::Capture(_))
                    | (Segment::Rest(_), Segment::Rest(_)) => true,
                    _ => false,
                })
    }

    /// Matches a resource; on success returns the captures.
    fn matches(&self, resource: &str) -> Option<Params> {
        let rest = resource.strip_prefix('/')?;
        let mut params = Params::default();
        let mut parts = rest.split('/');
        for segment in &self.segments {
            if let Segment::Rest(name) = segment {
                let remainder: Vec<&str> = parts.by_ref().collect();
                if remainder.is_empty() || remainder.iter().all(|p| p.is_empty()) {
                    return None;
                }
                params.push(name, &remainder.join("/"));
                return Some(params);
            }
            let part = parts.next()?;
            match segment {
                Segment::Static(s) if s == part => {}
                Segment::Static(_) => return None,
                Segment::Capture(_) if part.is_empty() => return None,
                Segment::Capture(name) => params.push(name, part),
                Segment::Rest(_) => unreachable!("handled above"),
            }
        }
        parts.next().is_none().then_some(params)
    }

    /// Specificity key, segment by segment: a static segment (2) before a
    /// capture (1) before a rest capture (0).
    fn specificity(&self) -> Vec<u8> {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Static(_) => 2,
                Segment::Capture(_) => 1,
                Segment::Rest(_) => 0,
            })
            .collect()
    }
}

/// One pattern and its handler for each verb, indexed by [`verb_index`].
struct Route<S> {
    pattern: Pattern,
    handlers: [Option<BoxedHandler<S>>; Verb::ALL.len()],
    /// The handler of `WATCH`.
    watch: Option<BoxedWatchHandler<S>>,
    /// Authorization rules of this route, checked after routing.
    rules: Arc<[Rule]>,
}

/// What routing a request found.
pub(crate) enum Routed<S> {
    /// The handler, the captures, and the rules that must allow the request:
    /// the route's own, then the server's.
    Found(BoxedHandler<S>, Params, Vec<Rule>),
    /// The same for a `WATCH`: its watch handler.
    Watch(BoxedWatchHandler<S>, Params, Vec<Rule>),
    /// A route matches but not for this verb: the verbs that do.
    NotAllowed(Vec<Verb>),
    NotFound,
}

/// The routing table.
pub(crate) struct Router<S> {
    /// Most specific first, so the first match with the verb is the best one.
    routes: Vec<Route<S>>,
    fallback: Option<BoxedHandler<S>>,
    /// The watch handler for a `WATCH` that no route matches.
    watch_fallback: Option<BoxedWatchHandler<S>>,
    /// The pattern registered last, which `restrict_last` applies to.
    last: Option<Pattern>,
    /// Rules for every request that routing finds a handler for.
    rules: Vec<Rule>,
}

impl<S> Default for Router<S> {
    fn default() -> Self {
        Router {
            routes: Vec::new(),
            fallback: None,
            watch_fallback: None,
            last: None,
            rules: Vec::new(),
        }
    }
}

/// A request verb's place in [`Verb::ALL`], the order of a `405`'s
/// `allow`; `None` for the verbs of watches.
fn verb_index(verb: Verb) -> Option<usize> {
    match verb {
        Verb::Get => Some(0),
        Verb::Store => Some(1),
        Verb::Update => Some(2),
        Verb::Delete => Some(3),
        Verb::Watch | Verb::Unwatch => None,
    }
}

impl<S> Router<S> {
    /// Adds the handlers of `methods` on `pattern`. Nothing is added when
    /// any of them conflicts.
    pub(crate) fn add(
        &mut self,
        pattern: &str,
        methods: MethodRouter<S>,
    ) -> Result<(), RouteError> {
        let pattern = Pattern::parse(pattern)?;
        for (i, (verb, _)) in methods.endpoints.iter().enumerate() {
            let Some(index) = verb_index(*verb) else {
                return Err(RouteError::WatchVerb {
                    verb: *verb,
                    pattern: pattern.text.clone(),
                });
            };
            let given_twice = methods.endpoints[..i].iter().any(|(v, _)| v == verb);
            // Captures are compared by position: `/u/{id}` and `/u/{name}` are one route.
            let existing = self
                .routes
                .iter()
                .find(|r| r.pattern.same_shape(&pattern) && r.handlers[index].is_some())
                .map(|r| &r.pattern.text);
            if let Some(existing) = existing.or(given_twice.then_some(&pattern.text)) {
                return Err(RouteError::Conflict {
                    verb: *verb,
                    pattern: pattern.text.clone(),
                    existing: existing.clone(),
                });
            }
        }
        if !methods.watches.is_empty() {
            let existing = self
                .routes
                .iter()
                .find(|r| r.pattern.same_shape(&pattern) && r.watch.is_some())
                .map(|r| &r.pattern.text);
            let given_twice = (methods.watches.len() > 1).then_some(&pattern.text);
            if let Some(existing) = existing.or(given_twice) {
                return Err(RouteError::Conflict {
                    verb: Verb::Watch,
                    pattern: pattern.text.clone(),
                    existing: existing.clone(),
                });
            }
        }
        self.last = Some(pattern.clone());
        let index = match self.routes.iter().position(|r| r.pattern == pattern) {
            Some(index) => index,
            None => {
                self.routes.push(Route {
                    pattern,
                    handlers: Default::default(),
                    watch: None,
                    rules: Arc::from([]),
                });
                self.routes.len() - 1
            }
        };
        for (verb, handler) in methods.endpoints {
            if let Some(slot) = verb_index(verb) {
                self.routes[index].handlers[slot] = Some(handler);
            }
        }
        if let Some(watch) = methods.watches.into_iter().next() {
            self.routes[index].watch = Some(watch);
        }
        self.routes
            .sort_by_key(|r| std::cmp::Reverse(r.pattern.specificity()));
        Ok(())
    }

    pub(crate) fn set_fallback(&mut self, handler: BoxedHandler<S>) {
        self.fallback = Some(handler);
    }

    pub(crate) fn set_watch_fallback(&mut self, handler: BoxedWatchHandler<S>) {
        self.watch_fallback = Some(handler);
    }

    /// Adds `rule` to the route registered last (every verb of its
    /// pattern); `None` when no route is registered yet.
    pub(crate) fn restrict_last(&mut self, rule: Rule) -> Option<()> {
        let last = self.last.as_ref()?;
        let route = self.routes.iter_mut().find(|r| r.pattern == *last)?;
        let mut rules = route.rules.to_vec();
        rules.push(rule);
        route.rules = Arc::from(rules);
        Some(())
    }

    /// Adds a rule for every request that routing finds a handler for.
    pub(crate) fn restrict_all(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    /// The route's rules followed by the server's.
    fn rules_for(&self, route: &[Rule]) -> Vec<Rule> {
        route.iter().chain(&self.rules).cloned().collect()
    }

    pub(crate) fn route(&self, verb: Verb, resource: &str) -> Routed<S> {
        // GET, STORE, UPDATE, DELETE, then WATCH: the order of `allow`.
        let mut allowed = [false; Verb::ROUTABLE.len()];
        let mut any = false;
        for route in &self.routes {
            let Some(params) = route.pattern.matches(resource) else {
                continue;
            };
            any = true;
            match verb_index(verb) {
                Some(index) => {
                    if let Some(handler) = &route.handlers[index] {
                        return Routed::Found(
                            Arc::clone(handler),
                            params,
                            self.rules_for(&route.rules),
                        );
                    }
                }
                None => {
                    if let (Verb::Watch, Some(handler)) = (verb, &route.watch) {
                        return Routed::Watch(
                            Arc::clone(handler),
                            params,
                            self.rules_for(&route.rules),
                        );
                    }
                }
            }
            let present = route
                .handlers
                .iter()
                .map(Option::is_some)
                .chain([route.watch.is_some()]);
            for (slot, present) in allowed.iter_mut().zip(present) {
                *slot |= present;
            }
        }
        if any {
            let verbs = Verb::ROUTABLE
                .into_iter()
                .zip(allowed)
                .filter_map(|(v, ok)| ok.then_some(v))
                .collect();
            return Routed::NotAllowed(verbs);
        }
        match (&self.fallback, &self.watch_fallback, verb) {
            (_, Some(handler), Verb::Watch) => {
                Routed::Watch(Arc::clone(handler), Params::default(), self.rules_for(&[]))
            }
            (Some(handler), _, verb) if verb_index(verb).is_some() => {
                Routed::Found(Arc::clone(handler), Params::default(), self.rules_for(&[]))
            }
            _ => Routed::NotFound,
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
    fn a_rest_capture_takes_the_remaining_segments() {
        let p = parse("/admin/{*rest}");
        let params = p.matches("/admin/users/1").unwrap();
        assert_eq!(params.get("rest"), Some("users/1"));
        assert_eq!(p.matches("/admin/x").unwrap().get("rest"), Some("x"));
        assert!(p.matches("/admin").is_none());
        assert!(p.matches("/admin/").is_none());
        assert!(p.matches("/other/x").is_none());
        // More specific patterns win.
        assert!(parse("/admin/{id}").specificity() > p.specificity());
        assert!(parse("/admin/users/{id}").specificity() > p.specificity());
    }

    #[test]
    fn malformed_patterns_are_refused_with_a_reason() {
        for bad in [
            "hello", "/a/{", "/a/{}", "/a/x{id}", "/{a}/{a}", "/{a-b}", "/{*a}/b", "/{*}",
        ] {
            let err = Pattern::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
