"""The deployment files, checked without a Docker engine.

``docker-compose.yml`` is parsed with PyYAML and validated against the
Compose Specification's JSON schema (``tests/data/compose-spec.json``; its
source is in ``tests/data/README.md``). Every service command must be a
console script of this project, every variable the code reads must be in
the README's table, and no secret may have a literal value or default in the
compose file. Every variable of that table reaches the compose service of
each process that reads it, and the sandbox publishes the ports it prints.
The Dockerfile's COPY sources must exist.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"

CODE_PACKAGES = ("bot", "handlers", "journey", "pairing_service", "municipality_kit")
"""Packages whose settings an operator sets; the sandbox has its own flags."""

SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD)$")
"""Variables that hold a credential by their name."""

REQUIRED_INTERPOLATION = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]*\}$")
"""``${NAME:?message}``: compose refuses to start when NAME is unset."""

DIRECT_READ = re.compile(
    r"""(?:environ|env)(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]+)["']"""
    r"""|_VARIABLE\s*=\s*["']([A-Z][A-Z0-9_]+)["']"""
)
"""Reads outside ``from_env``: ``os.environ.get("X")``, ``env["X"]`` and
named constants such as ``CLUSTER_VARIABLE = "REDIS_CLUSTER"``."""

README_ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]+)`\s*\|", re.MULTILINE)

README_PROCESS = re.compile(
    r"^\|\s*`([A-Z][A-Z0-9_]+)`\s*\|\s*([^|]+?)\s*\|", re.MULTILINE
)
"""A row of the settings table: the variable and the processes that read it."""

PROCESS_SERVICES = {"bot": "bot", "service": "pairing-service", "sandbox": "sandbox"}
"""The compose service that runs each process of the README's table."""

WITHHELD_FROM_COMPOSE = {("sandbox", "TELEGRAM_BOT_TOKEN")}
"""Variables a process reads that its compose service must not get: with the
bot's token the sandbox would poll real Telegram and take the production
bot's updates."""

PROCESS_PACKAGES = {"bot": ("bot", "handlers"), "service": ("pairing_service",)}
"""Packages whose ``from_env`` settings belong to one process."""

EMPTY_DEFAULT = re.compile(r"\$\{[A-Z0-9_]+:?-\}")
"""``${NAME:-}``: an unset host variable becomes an empty string."""

LOOPBACK_PORT = re.compile(r"^127\.0\.0\.1:(\d+):(\d+)$")

VALID_ENVIRONMENT = {
    "TELEGRAM_BOT_TOKEN": "123456:deployment-test-token",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "PAIRING_SERVICE_URL": "http://127.0.0.1:8080",
    "SERVICE_TOKEN": "s" * 40,
    "PUBLIC_BASE_URL": "https://koppel.example.nl",
    "BOT_USERNAME": "gezondverzekerd_bot",
    "BOT_MODE": "webhook",
    "WEBHOOK_URL": "https://bot.example.nl/telegram",
    "WEBHOOK_SECRET_TOKEN": "w" * 40,
    "SMTP_HOST": "127.0.0.1",
    "SMTP_FROM": "noreply@example.nl",
}
"""Values under which every ``from_env`` reads all of its variables; the
registry path is added per test, because it must name a file."""


class RecordingEnvironment(Mapping[str, str]):
    """A mapping that records every variable name looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self._values[name]

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return self._values.get(name, default)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self.read.add(name)
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def iter_modules() -> Iterator[Any]:
    for package_name in CODE_PACKAGES:
        package = importlib.import_module(package_name)
        yield package
        for info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if info.name.endswith("__main__"):
                continue
            yield importlib.import_module(info.name)


def from_env_classes() -> list[type]:
    found: dict[str, type] = {}
    for module in iter_modules():
        for _name, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == module.__name__ and "from_env" in vars(value):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def variables_read_by_from_env(
    registry: Path, packages: tuple[str, ...] = CODE_PACKAGES
) -> set[str]:
    names: set[str] = set()
    for settings_class in from_env_classes():
        if settings_class.__module__.partition(".")[0] not in packages:
            continue
        environ = RecordingEnvironment(
            {**VALID_ENVIRONMENT, "MUNICIPALITY_REGISTRY": str(registry)}
        )
        # A from_env that raised would have stopped before reading the rest;
        # a new required variable belongs in VALID_ENVIRONMENT above.
        settings_class.from_env(environ)
        names |= environ.read
    return names


def variables_read_directly(packages: tuple[str, ...] = CODE_PACKAGES) -> set[str]:
    names: set[str] = set()
    for package_name in packages:
        for path in (ROOT / package_name).rglob("*.py"):
            for match in DIRECT_READ.finditer(path.read_text(encoding="utf-8")):
                names.add(match.group(1) or match.group(2))
    return names


def readme_variables() -> set[str]:
    return set(README_ROW.findall(README.read_text(encoding="utf-8")))


def readme_variables_of(process: str) -> set[str]:
    rows = README_PROCESS.findall(README.read_text(encoding="utf-8"))
    return {
        variable
        for variable, processes in rows
        if process in (name.strip() for name in processes.split(","))
    }


def sandbox_variables() -> set[str]:
    return variables_read_directly(("sandbox",))


def option_value(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "municipalities.json"
    path.write_text(json.dumps({"municipalities": []}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return document


def test_compose_matches_compose_spec(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)
    ]
    assert errors == []


def test_compose_schema_rejects_typo(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    broken = json.loads(json.dumps(compose))
    broken["services"]["bot"]["enviroment"] = {}
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


def test_compose_commands_are_console_scripts(compose: dict[str, Any]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    scripts = project["project"]["scripts"]
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        command = service["command"]
        assert command[0] in scripts, name
        module, _sep, function = scripts[command[0]].partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_compose_redis_appends_only(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(
        volume.endswith(":/data") for volume in compose["services"]["redis"]["volumes"]
    )


def test_compose_sandbox_is_a_profile(compose: dict[str, Any]) -> None:
    assert compose["services"]["sandbox"]["profiles"] == ["sandbox"]
    for name in ("redis", "pairing-service", "bot"):
        assert "profiles" not in compose["services"][name], name


def test_compose_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name in ("redis", "pairing-service", "bot"):
        assert compose["services"][name]["healthcheck"]["test"], name


def test_compose_secrets_have_no_default(compose: dict[str, Any]) -> None:
    checked = 0
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        for variable, value in environment.items():
            if not SECRET_NAME.search(variable):
                continue
            checked += 1
            # None passes the host's value through; ${X:?…} requires it.
            assert value is None or REQUIRED_INTERPOLATION.match(str(value)), (
                name,
                variable,
                value,
            )
    assert checked >= 2


def test_compose_variables_are_known(
    compose: dict[str, Any], registry_file: Path
) -> None:
    known = (
        variables_read_by_from_env(registry_file)
        | variables_read_directly()
        | sandbox_variables()
    )
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        for variable in service.get("environment") or {}:
            assert variable in known, (name, variable)


def test_readme_lists_every_variable(registry_file: Path) -> None:
    read = variables_read_by_from_env(registry_file) | variables_read_directly()
    missing = sorted(read - readme_variables())
    assert missing == []


@pytest.mark.parametrize("process", sorted(PROCESS_SERVICES))
def test_compose_passes_every_setting(compose: dict[str, Any], process: str) -> None:
    service = compose["services"][PROCESS_SERVICES[process]]
    environment = service.get("environment") or {}
    expected = readme_variables_of(process)
    assert expected
    withheld = {name for owner, name in WITHHELD_FROM_COMPOSE if owner == process}
    missing = sorted(expected - withheld - set(environment))
    assert missing == []
    for variable in withheld:
        assert variable not in environment, variable


def test_compose_keeps_unset_variables_unset(compose: dict[str, Any]) -> None:
    # An empty string is a value: DELIVERY_RETRY_SCHEDULE= means no retries,
    # and LOG_LEVEL= is rejected. A key with no value stays unset instead.
    for name, service in compose["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            assert value != "", (name, variable)
            assert not EMPTY_DEFAULT.search(str(value)), (name, variable, value)


@pytest.mark.parametrize("process", sorted(PROCESS_PACKAGES))
def test_readme_names_the_reading_process(registry_file: Path, process: str) -> None:
    read = variables_read_by_from_env(registry_file, PROCESS_PACKAGES[process])
    assert read
    missing = sorted(read - readme_variables_of(process))
    assert missing == []


def test_readme_lists_sandbox_variables() -> None:
    missing = sorted(sandbox_variables() - readme_variables_of("sandbox"))
    assert missing == []


def test_compose_sandbox_publishes_printed_ports(compose: dict[str, Any]) -> None:
    sandbox = compose["services"]["sandbox"]
    command = sandbox["command"]
    printed = {
        option_value(command, "--emulator-port"),
        option_value(command, "--service-port"),
    }
    published: dict[str, str] = {}
    for mapping in sandbox["ports"]:
        match = LOOPBACK_PORT.match(str(mapping))
        # The emulator's testing API has no authentication, so the host
        # publishes it on loopback only.
        assert match, mapping
        published[match.group(2)] = match.group(1)
    for port in printed:
        # The printed address carries the container's port, so the host
        # must publish it under the same number.
        assert published.get(port) == port, port


def test_compose_host_ports_are_distinct(compose: dict[str, Any]) -> None:
    host_ports_in_use: set[str] = set()
    for name, service in compose["services"].items():
        for mapping in service.get("ports") or []:
            host_port = str(mapping).split(":")[-2]
            assert host_port not in host_ports_in_use, (name, mapping)
            host_ports_in_use.add(host_port)


def test_compose_sandbox_sets_public_host(compose: dict[str, Any]) -> None:
    environment = compose["services"]["sandbox"]["environment"]
    assert "SANDBOX_PUBLIC_HOST" in environment
    assert (
        option_value(compose["services"]["sandbox"]["command"], "--host") == "0.0.0.0"
    )


def test_variable_scan_finds_settings(registry_file: Path) -> None:
    read = variables_read_by_from_env(registry_file)
    for name in ("TELEGRAM_BOT_TOKEN", "WEBHOOK_SECRET_TOKEN", "PAIRING_TTL_SECONDS"):
        assert name in read


def test_dockerfile_copies_existing_paths() -> None:
    sources: list[str] = []
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources.extend(parts[1:-1])
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source


def test_dockerfile_copies_every_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    text = DOCKERFILE.read_text(encoding="utf-8")
    for pattern in patterns:
        package = pattern.rstrip("*")
        assert re.search(rf"^COPY {package} ", text, re.MULTILINE), package


def test_dockerfile_runs_as_non_root() -> None:
    users = [
        line.split()[1]
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.startswith("USER ")
    ]
    assert users
    assert users[-1] not in ("root", "0")
