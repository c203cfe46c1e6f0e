-- Release history and finished tasks. Portable between SQLite and PostgreSQL: TEXT and BIGINT only.
CREATE TABLE releases (
    app TEXT NOT NULL,
    env TEXT NOT NULL,
    number BIGINT NOT NULL,
    sha TEXT NOT NULL,
    image TEXT NOT NULL,
    manifest TEXT NOT NULL,
    task_id TEXT NOT NULL,
    containers TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (app, env, number)
);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    env TEXT NOT NULL,
    state TEXT NOT NULL,
    document TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE INDEX tasks_by_app ON tasks (app, created_ms);
