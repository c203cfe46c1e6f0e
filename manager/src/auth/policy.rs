//! What each route needs, decided from its method and route template (never from the raw path, so a
//! new route is covered by the defaults: a route with an `{app}` needs that app, any other write needs a
//! superuser).

use std::collections::HashMap;

use axum::http::Method;

/// What a request needs besides a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Any valid token.
    Token,
    /// A login session (not a CI token).
    Session,
    /// A superuser session.
    Superuser,
    /// Access to this app (env for the audit).
    App {
        /// The app.
        app: String,
        /// The env, if the route has one.
        env: Option<String>,
    },
    /// Registering an app: the body's team must be the caller's.
    CreateApp,
    /// Membership of this team.
    Team(String),
    /// Access to the app of this task.
    Task(String),
    /// Access to the app of this container.
    Container(String),
    /// Listing tasks: superuser, or `?app=` the caller may access.
    ListByApp,
    /// Deciding about a dependency (grant, revoke): a member of its owning team or a superuser, never
    /// the depender as such.
    DependencyOwner(String),
    /// Dropping a pending request: the dependency's owning team (declines) or the depender app's
    /// (withdraws).
    DependencyParty {
        /// The dependency.
        dependency: String,
        /// The app that asked.
        app: String,
    },
}

/// Routes reachable without a token.
pub fn exempt(path: &str) -> bool {
    // The registry token endpoint authenticates itself: Docker clients send Basic credentials there.
    matches!(
        path,
        "/healthz" | "/openapi.json" | "/v1/login" | "/v1/registry/token"
    )
}

/// True for calls that change something (audited).
pub fn mutating(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// What `method template` needs; `params` are the path parameters.
pub fn classify(method: &Method, template: Option<&str>, params: &HashMap<String, String>) -> Need {
    let read = !mutating(method);
    let Some(t) = template else {
        return Need::Token;
    };
    let p = |k: &str| params.get(k).cloned().unwrap_or_default();
    match t {
        "/v1/whoami" | "/metrics" => Need::Token,
        "/v1/tokens" => Need::Session,
        "/v1/teams" => Need::Token,
        "/v1/teams/{team}/apps" => Need::Team(p("team")),
        "/v1/audit" | "/v1/tasks" => Need::ListByApp,
        "/v1/apps" if read => Need::Token,
        "/v1/apps" => Need::CreateApp,
        _ if t.starts_with("/v1/teams/") => Need::Superuser,
        // Grants are the owner's to give: checked before the `{app}` rule below, which would let the
        // depender's team decide.
        "/v1/dependencies/{name}/grants/{app}" if !read => Need::DependencyOwner(p("name")),
        "/v1/dependencies/{name}/requests/{app}" if *method == Method::DELETE => {
            Need::DependencyParty {
                dependency: p("name"),
                app: p("app"),
            }
        }
        "/v1/dependencies/{name}/requests/{app}" if !read => Need::App {
            app: p("app"),
            env: None,
        },
        _ if t.starts_with("/v1/tasks/{id}") => Need::Task(p("id")),
        _ if t.starts_with("/v1/containers/{id}") => Need::Container(p("id")),
        _ if params.contains_key("app") => Need::App {
            app: p("app"),
            env: params.get("env").cloned(),
        },
        _ if read => Need::Token,
        // Envs, dependencies, router config, and every other write: the cluster's operators.
        _ => Need::Superuser,
    }
}

/// What a CI token of scope deploy may do besides reading: start releases.
pub fn ci_deploy_allowed(method: &Method, template: Option<&str>) -> bool {
    !mutating(method)
        || template.is_some_and(|t| {
            t.ends_with("/deploy")
                || t.ends_with("/rollback")
                || t.ends_with("/scale")
                || t == "/v1/apps/{app}/build-token"
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn routes_are_classified_safely() {
        let none = params(&[]);
        assert_eq!(
            classify(&Method::POST, Some("/v1/envs"), &none),
            Need::Superuser
        );
        assert_eq!(
            classify(
                &Method::PUT,
                Some("/v1/router-config/{kind}/{section}/{name}"),
                &none
            ),
            Need::Superuser
        );
        assert_eq!(
            classify(&Method::POST, Some("/v1/something-new"), &none),
            Need::Superuser
        );
        assert_eq!(
            classify(&Method::GET, Some("/v1/usage"), &none),
            Need::Token
        );
        let app = params(&[("app", "web"), ("env", "prod")]);
        assert_eq!(
            classify(
                &Method::POST,
                Some("/v1/apps/{app}/envs/{env}/deploy"),
                &app
            ),
            Need::App {
                app: "web".into(),
                env: Some("prod".into())
            }
        );
        assert_eq!(
            classify(&Method::PUT, Some("/v1/teams/{team}/apps/{app}"), &app),
            Need::Superuser
        );
        let grant = params(&[("name", "b-db"), ("app", "a-web")]);
        for m in [Method::PUT, Method::DELETE, Method::POST] {
            assert_eq!(
                classify(&m, Some("/v1/dependencies/{name}/grants/{app}"), &grant),
                Need::DependencyOwner("b-db".into()),
                "{m}"
            );
        }
        assert_eq!(
            classify(
                &Method::PUT,
                Some("/v1/dependencies/{name}/requests/{app}"),
                &grant
            ),
            Need::App {
                app: "a-web".into(),
                env: None
            }
        );
        assert_eq!(
            classify(
                &Method::DELETE,
                Some("/v1/dependencies/{name}/requests/{app}"),
                &grant
            ),
            Need::DependencyParty {
                dependency: "b-db".into(),
                app: "a-web".into()
            }
        );
        assert_eq!(
            classify(&Method::GET, Some("/v1/dependency-requests"), &none),
            Need::Token
        );
        let id = params(&[("id", "c1")]);
        assert_eq!(
            classify(&Method::POST, Some("/v1/containers/{id}/exec"), &id),
            Need::Container("c1".into())
        );
        assert_eq!(classify(&Method::GET, None, &none), Need::Token);
        assert!(ci_deploy_allowed(
            &Method::POST,
            Some("/v1/apps/{app}/envs/{env}/deploy")
        ));
        assert!(!ci_deploy_allowed(&Method::DELETE, Some("/v1/apps/{app}")));
    }
}
