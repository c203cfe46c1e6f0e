-- Authorisation and audit (issue 16). Portable between SQLite and PostgreSQL: TEXT and BIGINT only.

-- Team -> app grants (`allow-app`); an app's owning team (its registration) grants without a row here.
CREATE TABLE team_apps (
    team TEXT NOT NULL,
    app TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (team, app)
);

CREATE INDEX team_apps_by_app ON team_apps (app);

-- Who did what to which app, when, from where, with what result. Appended only.
CREATE TABLE audit (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    user_name TEXT NOT NULL,
    action TEXT NOT NULL,
    app TEXT NOT NULL,
    env TEXT NOT NULL,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    result TEXT NOT NULL,
    status BIGINT NOT NULL,
    detail TEXT NOT NULL
);

CREATE INDEX audit_by_time ON audit (at_ms, seq);
CREATE INDEX audit_by_app ON audit (app, at_ms);
CREATE INDEX audit_by_user ON audit (user_name, at_ms);
