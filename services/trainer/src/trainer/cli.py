"""``tributary-trainer-cli``: issue manual retrain commands and read their outcomes over the trainer's API.

Examples::

    tributary-trainer-cli retrain --model credit-default --dataset credit --start 2026-10-25T00:00:00Z --wait
    tributary-trainer-cli retrain --model credit-default --dataset credit --window-json window.json  # replay
    tributary-trainer-cli status cmd-0b6f...
    tributary-trainer-cli keygen --key-id trainer-1 --dir /etc/tributary/keys  # artifact signing keys
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError
from schemas.signing import KeyId

from trainer.signing import generate_key_pair

KeyId_: TypeAdapter[str] = TypeAdapter(KeyId)


def _print(body: Any) -> None:
    print(json.dumps(body, indent=2, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and call the trainer; exit 0 on success, 1 on a failed command, 2 on errors."""
    parser = argparse.ArgumentParser(prog="tributary-trainer-cli", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TRAINER_URL", "http://127.0.0.1:8083"),
                        help="trainer base URL (TRAINER_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    retrain = commands.add_parser("retrain", help="queue a manual retrain command")
    retrain.add_argument("--model", required=True, help="registry model name")
    retrain.add_argument("--dataset", required=True)
    retrain.add_argument("--start", help="window start (ISO 8601 with a time zone)")
    retrain.add_argument("--end", help="window end (ISO 8601 with a time zone)")
    retrain.add_argument("--window-json", type=Path,
                         help="a recorded window (JSON with offsets) to replay exactly, e.g. from a model's lineage")
    retrain.add_argument("--command-id", help="idempotency key (default: generated)")
    retrain.add_argument("--note", default="")
    retrain.add_argument("--wait", action="store_true", help="wait for the outcome")
    retrain.add_argument("--timeout", type=float, default=3600.0, help="how long --wait waits (seconds)")
    status = commands.add_parser("status", help="the outcome of a command")
    status.add_argument("command_id")
    keygen = commands.add_parser("keygen", help="make an Ed25519 key pair for signing artifacts")
    keygen.add_argument("--key-id", required=True, help="the key's name (letters, digits, ._-)")
    keygen.add_argument("--dir", type=Path, default=Path("."), help="where to write <key id>.key and .pub")
    args = parser.parse_args(argv)

    if args.command == "keygen":
        return _keygen(args.dir, args.key_id)

    with httpx.Client(base_url=args.url, timeout=30) as client:
        try:
            if args.command == "status":
                return _status(client, args.command_id)
            body: dict[str, Any] = {"model_name": args.model, "dataset": args.dataset, "note": args.note,
                                    "requested_by": os.environ.get("USER", "cli")}
            if args.window_json:
                window = json.loads(args.window_json.read_text())
                body |= {k: window[k] for k in ("start_time", "end_time", "offsets") if window.get(k)}
            body |= {k: v for k, v in (("start_time", args.start), ("end_time", args.end),
                                       ("command_id", args.command_id)) if v}
            response = client.post("/v1/commands", json=body)
            if response.status_code != 202:
                print(f"error: {response.status_code} {response.text}", file=sys.stderr)
                return 2
            accepted = response.json()
            _print(accepted)
            if not args.wait:
                return 0
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                answer = client.get(f"/v1/commands/{accepted['command_id']}")
                if answer.status_code == 200:
                    _print(answer.json())
                    return 0 if answer.json()["status"] == "completed" else 1
                time.sleep(2)
            print("error: no outcome before the timeout; check later with `status`", file=sys.stderr)
            return 2
        except httpx.HTTPError as exc:
            print(f"error: the trainer at {args.url} did not answer: {exc}", file=sys.stderr)
            return 2


def _status(client: httpx.Client, command_id: str) -> int:
    response = client.get(f"/v1/commands/{command_id}")
    if response.status_code == 404:
        print(response.json().get("message", "unknown command"), file=sys.stderr)
        return 2
    _print(response.json())
    return 0 if response.json()["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())


def _keygen(directory: Path, key_id: str) -> int:
    try:
        KeyId_.validate_python(key_id)
    except ValidationError:
        print(f"error: {key_id!r} is not a key id: letters, digits and ._- (64 at most)", file=sys.stderr)
        return 2
    try:
        private, public = generate_key_pair(directory, key_id)
    except (FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"private key: {private}  (the trainer's TRAINER_SIGNING_KEY; keep it secret)")
    print(f"public key:  {public}  (copy into the registry's REGISTRY_SIGNING_KEYS_DIR)")
    return 0
