//! Authorization after routing: rules that look at the authenticated client,
//! the verb and the resource, and refuse with `403` and a message.
//!
//! A route can require a certificate principal
//! (`KorvServer::require_principal`), and [`KorvServer::authorize`] adds a
//! rule for every route. Rules run after routing (a `404` or `405` is
//! answered first) and before the handler.
//!
//! [`KorvServer::authorize`]: crate::KorvServer::authorize

use std::fmt;
use std::sync::Arc;

use korv_proto::Verb;

use crate::request::ClientInfo;

/// What an authorization rule answers: `true` or `Ok(())` allows; `false`
/// or `Err(message)` refuses with `403`.
pub trait Authorization {
    /// `Ok(())` to allow, else the refusal's message.
    fn into_result(self) -> Result<(), String>;
}

impl Authorization for bool {
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("not authorized".to_owned())
        }
    }
}

impl Authorization for Result<(), String> {
    fn into_result(self) -> Result<(), String> {
        self
    }
}

impl Authorization for Result<(), &'static str> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(str::to_owned)
    }
}

/// A rule's check: `Ok(())` allows, `Err(message)` refuses.
type Check = dyn Fn(&ClientInfo, Verb, &str) -> Result<(), String> + Send + Sync;

/// One rule, shared by every stream.
#[derive(Clone)]
pub(crate) struct Rule(Arc<Check>);

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rule")
    }
}

impl Rule {
    /// A rule from a closure over the client, the verb and the resource.
    pub(crate) fn new<F, A>(rule: F) -> Self
    where
        F: Fn(&ClientInfo, Verb, &str) -> A + Send + Sync + 'static,
        A: Authorization,
    {
        Rule(Arc::new(move |client, verb, resource| {
            rule(client, verb, resource).into_result()
        }))
    }

    /// Allows only clients whose certificate carries `principal`.
    pub(crate) fn principal(principal: impl Into<String>) -> Self {
        let principal = principal.into();
        Rule(Arc::new(move |client, _, _| {
            require_principal(client, &principal)
        }))
    }

    pub(crate) fn check(
        &self,
        client: &ClientInfo,
        verb: Verb,
        resource: &str,
    ) -> Result<(), String> {
        (self.0)(client, verb, resource)
    }
}

/// `Ok(())` when the client's certificate carries `principal`, else a
/// message saying what is missing.
pub(crate) fn require_principal(client: &ClientInfo, principal: &str) -> Result<(), String> {
    match &client.certificate {
        Some(cert) if cert.has_principal(principal) => Ok(()),
        Some(cert) => Err(format!(
            "this resource requires the certificate principal {principal:?}; the client's certificate {:?} carries {:?}",
            cert.key_id, cert.principals
        )),
        None => Err(format!(
            "this resource requires the certificate principal {principal:?}; the client did not authenticate with a certificate"
        )),
    }
}

/// Runs `rules` in order; the first refusal wins.
pub(crate) fn check_all<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
    client: &ClientInfo,
    verb: Verb,
    resource: &str,
) -> Result<(), String> {
    rules
        .into_iter()
        .try_for_each(|rule| rule.check(client, verb, resource))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateInfo;

    fn with_principals(principals: &[&str]) -> ClientInfo {
        let mut client = ClientInfo::local("alice");
        client.certificate = Some(CertificateInfo::for_tests(principals));
        client
    }

    #[test]
    fn a_required_principal_allows_only_certificates_that_carry_it() {
        let rule = Rule::principal("admin");
        assert!(
            rule.check(&with_principals(&["alice", "admin"]), Verb::Get, "/")
                .is_ok()
        );
        let refusal = rule
            .check(&with_principals(&["alice"]), Verb::Get, "/")
            .unwrap_err();
        assert!(refusal.contains("\"admin\""), "{refusal}");
        let refusal = rule
            .check(&ClientInfo::local("alice"), Verb::Get, "/")
            .unwrap_err();
        assert!(
            refusal.contains("did not authenticate with a certificate"),
            "{refusal}"
        );
    }

    #[test]
    fn general_rules_see_verb_and_resource_and_the_first_refusal_wins() {
        let read_only = Rule::new(|_: &ClientInfo, verb: Verb, _: &str| verb == Verb::Get);
        let no_secrets = Rule::new(|_: &ClientInfo, _: Verb, resource: &str| {
            if resource.starts_with("/secret") {
                Err("secrets are off limits")
            } else {
                Ok(())
            }
        });
        let rules = [read_only, no_secrets];
        let client = ClientInfo::local("bob");
        assert!(check_all(&rules, &client, Verb::Get, "/notes").is_ok());
        assert_eq!(
            check_all(&rules, &client, Verb::Store, "/secret/x"),
            Err("not authorized".to_owned())
        );
        assert_eq!(
            check_all(&rules, &client, Verb::Get, "/secret/x"),
            Err("secrets are off limits".to_owned())
        );
    }
}
