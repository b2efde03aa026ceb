"""``tributary-registry-cli``: list, show, promote and roll back models; manage tokens.

Model commands talk to a running registry over HTTP (``--url``/``REGISTRY_URL``; changes
need ``--token``/``REGISTRY_TOKEN``), so every change is authorised, audited and published
exactly like an API call. Token and migration commands work on the database directly
(``REGISTRY_DATABASE_URL``, or the SQLite file under ``REGISTRY_DATA_DIR``): they are for the
operator of the registry host, and how the first token is made.

Examples::

    tributary-registry-cli tokens create --name ci-trainer --role trainer
    tributary-registry-cli list
    tributary-registry-cli show fraud --version 3
    tributary-registry-cli promote fraud 3 --reason "beats v2 on AUC"
    tributary-registry-cli promote fraud 4 --alias canary --weight 0.1 --reason "try on 10%"
    tributary-registry-cli rollback fraud --reason "latency regression"
    tributary-registry-cli history fraud --alias champion
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx

from registry.domain import Role

DEFAULT_URL = "http://127.0.0.1:8082"


class CliError(Exception):
    """A command failed; the message is printed and the exit status is 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tributary-registry-cli",
                                     description="List, show, promote and roll back registry models; manage tokens.")
    parser.add_argument("--url", default=os.environ.get("REGISTRY_URL", DEFAULT_URL),
                        help="registry base URL (env REGISTRY_URL)")
    parser.add_argument("--token", default=os.environ.get("REGISTRY_TOKEN"),
                        help="bearer token for changes (env REGISTRY_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print raw JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list models with their aliases")
    show = sub.add_parser("show", help="show a model, or one version with its lineage")
    show.add_argument("name")
    show.add_argument("--version", type=int)

    promote = sub.add_parser("promote", help="point an alias at a version")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    promote.add_argument("--alias", default="champion", choices=["champion", "canary", "shadow"])
    promote.add_argument("--weight", type=float, help="canary traffic share in (0, 1]")
    promote.add_argument("--reason", required=True)

    rollback = sub.add_parser("rollback", help="point an alias back at an earlier version")
    rollback.add_argument("name")
    rollback.add_argument("--alias", default="champion", choices=["champion", "canary", "shadow"])
    rollback.add_argument("--to", type=int, dest="to_version", help="default: the alias's previous version")
    rollback.add_argument("--reason", required=True)

    history = sub.add_parser("history", help="who moved which alias when, and why")
    history.add_argument("name")
    history.add_argument("--alias", choices=["champion", "canary", "shadow"])

    tokens = sub.add_parser("tokens", help="create or revoke API tokens (database access)")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tokens_sub.add_parser("create", help="create a token and print it once")
    create.add_argument("--name", required=True, help="who holds it (recorded as creator/changer)")
    create.add_argument("--role", action="append", required=True, choices=[r.value for r in Role])
    revoke = tokens_sub.add_parser("revoke", help="revoke every token of a holder")
    revoke.add_argument("--name", required=True)

    sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    return parser


def main(argv: Sequence[str] | None = None, *, client: httpx.Client | None = None) -> int:
    """Run one command; return the exit status (0 ok, 1 refused or failed, 2 usage)."""
    args = _parser().parse_args(argv)
    try:
        if args.command in ("tokens", "migrate"):
            _local(args)
        else:
            with client or httpx.Client(base_url=args.url, timeout=60) as http:
                _remote(args, http)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _local(args: argparse.Namespace) -> None:
    from registry.db import SqlModelStore, make_engine
    from registry.errors import RegistryError
    from registry.migrations import upgrade_to_head
    from registry.service import EventTopics, Limits, RegistryService
    from registry.settings import Settings
    from registry.storage import LocalArtifactStore

    settings = Settings()
    upgrade_to_head(settings.db_url)
    if args.command == "migrate":
        print("database is at the newest schema")
        return
    engine = make_engine(settings.db_url)
    try:
        service = RegistryService(
            store=SqlModelStore(engine),
            artifacts=LocalArtifactStore(settings.artifact_root),
            limits=Limits(settings.max_artifact_bytes, settings.min_opset, settings.max_opset),
            topics=EventTopics(settings.model_registered_topic, settings.rollout_changed_topic),
        )
        if args.tokens_command == "create":
            print(service.issue_token(args.name, [Role(r) for r in args.role]))
        else:
            print(f"revoked {service.revoke_tokens(args.name)} token(s) of {args.name!r}")
    except RegistryError as exc:
        raise CliError(str(exc)) from exc
    finally:
        engine.dispose()


def _remote(args: argparse.Namespace, http: httpx.Client) -> None:
    if args.command == "list":
        body = _call(http, "GET", "/v1/models")
        if args.json:
            _print_json(body)
            return
        for model in body["data"]:
            aliases = ", ".join(f"{a}=v{s['version']}" + (f" ({s['weight']:.0%})" if s["weight"] is not None else "")
                                for a, s in sorted(model["aliases"].items()))
            print(f"{model['name']:<32} latest=v{model['latest_version']:<5} {aliases or '-'}")
    elif args.command == "show":
        path = f"/v1/models/{args.name}" + (f"/versions/{args.version}" if args.version else "")
        _print_json(_call(http, "GET", path))
    elif args.command == "history":
        params = {"alias": args.alias} if args.alias else None
        body = _call(http, "GET", f"/v1/models/{args.name}/history", params=params)
        if args.json:
            _print_json(body)
            return
        for c in body["data"]:
            target = "removed" if c["version"] is None else f"v{c['version']}"
            print(f"{c['changed_at']} {c['alias']:<8} v{c['previous_version'] or '-'} -> {target} "
                  f"by {c['changed_by']}: {c['reason']}")
    elif args.command == "promote":
        body = _call(http, "PUT", f"/v1/models/{args.name}/aliases/{args.alias}", token=args.token,
                     json={"version": args.version, "weight": args.weight, "reason": args.reason})
        _print_change(body, args.json)
    elif args.command == "rollback":
        body = _call(http, "POST", f"/v1/models/{args.name}/aliases/{args.alias}/rollback", token=args.token,
                     json={"to_version": args.to_version, "reason": args.reason})
        _print_change(body, args.json)


def _call(http: httpx.Client, method: str, path: str, *, token: str | None = None,
          json: dict[str, Any] | None = None, params: dict[str, str] | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = http.request(method, path, headers=headers, json=json, params=params)
    except httpx.HTTPError as exc:
        raise CliError(f"registry at {http.base_url} could not be reached: {exc}") from exc
    if response.status_code >= 400:
        try:
            detail = response.json()
            message = detail.get("error") or detail.get("detail") or response.text
        except ValueError:
            message = response.text
        raise CliError(f"{method} {path}: HTTP {response.status_code}: {message}")
    return response.json()


def _print_change(change: dict[str, Any], raw: bool) -> None:
    if raw:
        _print_json(change)
        return
    print(f"{change['model_name']} {change['alias']}: v{change['previous_version'] or '-'} -> v{change['version']}"
          f" ({change['reason']})")


def _print_json(body: Any) -> None:
    print(json.dumps(body, indent=2, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
