"""The deploy files at the repository root (Procfile, app.json, render.yaml) parse, and
every command they name runs against a real Postgres (the test database) with the
environment they declare: the release/pre-deploy command migrates, the web command
serves /ready, the worker command starts and stops on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import secrets
import shlex
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from tests.e2e.procs import background, env, run
from tests.peers.net import free_port

ROOT = Path(__file__).parents[2]
#: Set by the platforms themselves, not by postbell's settings.
PLATFORM_VARIABLES = {"DATABASE_URL", "PORT", "PYTHON_VERSION", "WEB_CONCURRENCY"}
#: Connections a web or worker process holds beyond its pool (docs/operations.md).
OWN_CONNECTIONS = 2
#: Heroku Postgres essential-0 (the former mini) allows this many connections.
HEROKU_ESSENTIAL_CONNECTIONS = 20


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(
        (name.strip(), command.strip())
        for name, _, command in (line.partition(":") for line in lines if line.strip())
    )


def app_json() -> dict[str, Any]:
    return dict(json.loads((ROOT / "app.json").read_text()))


def render_yaml() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "render.yaml").read_text()))


def documented_settings() -> str:
    return (ROOT / "docs" / "configuration.md").read_text()


def test_procfile_declares_release_web_and_worker() -> None:
    assert procfile() == {
        "release": "postbell migrate",
        "web": "postbell serve",
        "worker": "postbell worker",
    }


def test_app_json_runs_the_procfile_on_a_20_connection_database() -> None:
    """The Heroku button: the formation's process types are the Procfile's, the
    database is Heroku Postgres, and web + worker fit its 20 connections with room
    for the release phase and a console."""
    app = app_json()
    assert set(app["formation"]) <= set(procfile()) - {"release"}
    assert [a["plan"].split(":")[0] for a in app["addons"]] == ["heroku-postgresql"]
    pool = int(app["env"]["POSTBELL_DB_POOL_SIZE"]["value"])
    web = int(app["env"]["WEB_CONCURRENCY"]["value"]) * (pool + OWN_CONNECTIONS)
    worker = app["formation"]["worker"]["quantity"] * (pool + OWN_CONNECTIONS)
    assert web + worker + 2 <= HEROKU_ESSENTIAL_CONNECTIONS
    for name, spec in app["env"].items():
        assert name in PLATFORM_VARIABLES or f"`{name}`" in documented_settings(), name
        assert "value" in spec or spec.get("generator") == "secret" or spec.get("required") is False


def test_render_yaml_declares_web_worker_and_postgres() -> None:
    blueprint = render_yaml()
    services = {s["type"]: s for s in blueprint["services"]}
    assert set(services) == {"web", "worker"}
    assert services["web"]["startCommand"] == procfile()["web"]
    assert services["web"]["preDeployCommand"] == procfile()["release"]
    assert services["web"]["healthCheckPath"] == "/ready"
    assert services["worker"]["startCommand"] == procfile()["worker"]
    databases = {d["name"] for d in blueprint["databases"]}
    for service in services.values():
        assert service["buildCommand"] == "pip install ."
        sources = [v["fromDatabase"]["name"] for v in service["envVars"] if "fromDatabase" in v]
        assert sources and set(sources) <= databases
    for name in _render_environment(service, "postgresql://unused"):
        assert name in PLATFORM_VARIABLES or f"`{name}`" in documented_settings(), name


def _render_environment(service: dict[str, Any], database_url: str) -> dict[str, str]:
    groups = {g["name"]: g["envVars"] for g in render_yaml().get("envVarGroups", [])}
    out: dict[str, str] = {}
    for variable in service["envVars"]:
        for item in groups[variable["fromGroup"]] if "fromGroup" in variable else [variable]:
            if "fromDatabase" in item:
                out[item["key"]] = database_url
            elif item.get("generateValue"):
                out[item["key"]] = secrets.token_hex(32)
            else:
                out[item["key"]] = str(item["value"])
    return out


def _heroku_environment(database_url: str) -> dict[str, str]:
    out = {"DATABASE_URL": database_url}
    for name, spec in app_json()["env"].items():
        if spec.get("generator") == "secret":
            out[name] = secrets.token_hex(32)
        elif "value" in spec:
            out[name] = spec["value"]
    return out


def _deploys(database_url: str) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Per deploy file: the (command, environment) pairs it names, release first."""
    heroku = _heroku_environment(database_url)
    found = {"Procfile + app.json": [(procfile()[n], heroku) for n in ("release", "web", "worker")]}
    render: list[tuple[str, dict[str, str]]] = []
    for service in render_yaml()["services"]:
        environment = _render_environment(service, database_url)
        for key in ("preDeployCommand", "startCommand"):
            if key in service:
                render.append((service[key], environment))
    found["render.yaml"] = sorted(render, key=lambda c: c[0] != "postbell migrate")
    return found


def _migrated(database_url: str) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT to_regclass('postbell.schema_migrations') IS NOT NULL"
        ).fetchone()
        return bool(row and row[0])


def _poll(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_every_command_the_deploy_files_name_runs(fresh_database_url: str) -> None:
    """On an empty database, per deploy file: its release command migrates it (as the
    platforms run it before the new processes), then its web command answers /ready
    and its worker command starts, side by side, each stopping cleanly on SIGTERM."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA postbell CASCADE")
    known = {"postbell migrate", "postbell serve", "postbell worker"}
    for where, commands in _deploys(fresh_database_url).items():
        unknown = [c for c, _ in commands if c not in known]
        assert not unknown, f"{where}: teach this test to run {unknown}"
        started: dict[str, Any] = {}
        with contextlib.ExitStack() as stack:
            for command, environment in commands:
                args = shlex.split(command)
                environ = env(**environment, POSTBELL_LOG_FORMAT="json", POSTBELL_HOST="127.0.0.1")
                if command == "postbell migrate":
                    result = run(*args[1:], environ=environ)
                    assert result.returncode == 0, (where, result.stdout + result.stderr)
                    assert _migrated(fresh_database_url), where
                    continue
                if command == "postbell serve":
                    port = free_port()
                    environ["PORT"] = str(port)
                    started["ready"] = f"http://127.0.0.1:{port}/ready"
                started[command] = stack.enter_context(background(*args[1:], environ=environ))
            _poll(lambda s=started: _ready(s["ready"]), timeout=90)
            _poll(lambda s=started: "worker_started" in s["postbell worker"].output(), timeout=90)
            for command in ("postbell serve", "postbell worker"):
                proc = started[command]
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0, (where, command, proc.output())
