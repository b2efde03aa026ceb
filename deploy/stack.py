"""The whole local stack and the closed-loop demo in the foreground: ``deploy/tributary up``.

Starts, in order and each after the previous one answers: the Kafka broker, Redis, the model
registry (SQLite, artifacts and the Triton repository under ``.tributary/registry``; trainer and
operator tokens made on the first run and kept in ``.tributary/tokens.json``), a local CPU Triton
on the registry's repository, then ingest, drift, the trainer and the inference gateway. Then the
demo: a credit-default generator (``deploy/demo/generator.py``) streams applications,
predictions and late labels; once enough labels exist the runner asks the trainer for a
baseline and makes it champion; ``--shift-at`` seconds later the generator injects a shift, and
the loop runs by itself — drift detects it, asks for a retrain, the trainer registers a new
version as canary, the gateway's canary analysis steps it up and promotes it. The timeline
(``deploy/demo/timeline.py``) prints every milestone and the time from the shift to the new
champion.

Ctrl-C, SIGTERM, ``--duration`` or (with ``--until-promoted``) the promotion stop everything in
reverse order. State is kept in ``.tributary/`` (``TRIBUTARY_STATE``) between runs; ``--fresh``
wipes it first (not the installed Triton or bootstrap environments).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.demo.generator import DATASET, MODEL, SHIFTED_FEATURES, SPEC, Generator, http_json
from deploy.demo.timeline import LoopState, Timeline, say
from deploy.localstack import REPO, Broker, ServiceProcess, StartError, free_port
from deploy.triton import RepositorySync, TritonServer

STATE = Path(os.environ.get("TRIBUTARY_STATE", REPO / ".tributary"))

FRESH_DIRS = ("kafka", "redis", "registry", "drift", "logs", "triton/models")
"""What ``--fresh`` wipes under the state folder (installed environments and caches stay)."""

DEMO_SETTINGS: dict[str, dict[str, str]] = {
    # Windows of 400 applications every 200 (4 s at 50/s); three drifted windows in a row ask for
    # one retrain on the last 25 s of data, then nothing for 10 minutes.
    "drift": {"DRIFT_WINDOW_SIZE": "400", "DRIFT_WINDOW_STEP": "200", "DRIFT_CONSECUTIVE_WINDOWS": "3",
              "DRIFT_CLEAR_WINDOWS": "3", "DRIFT_COOLDOWN_S": "600", "DRIFT_RETRAIN_WINDOW_S": "25",
              "DRIFT_BOOTSTRAP_REFERENCE": "false"},
    # Small data: a short patience; the canary starts at the analysis' first step. The gate compares
    # AUC and accuracy: F1 at the fixed 0.5 threshold on a few hundred post-shift rows swings with the
    # base rate (the old champion over-predicts defaults after the shift and wins on F1 alone).
    "trainer": {"TRAINER_MAX_EPOCHS": "60", "TRAINER_PATIENCE": "6", "TRAINER_MIN_ROWS": "200",
                "TRAINER_CANARY_WEIGHT": "0.25", "TRAINER_TRITON_READY_TIMEOUT_S": "60",
                "TRAINER_GATE_METRICS": '["auc", "accuracy"]'},
    # Analyse every 2 s; 30 canary requests per step; 25% -> 50% -> 100% -> champion. A model retrained
    # after a concept shift is meant to disagree with the old one, so divergence never rolls it back;
    # two shared cores make p99 noisy, so latency must be 100 ms worse to count.
    "inference": {"INFERENCE_CANARY_INTERVAL_S": "2", "INFERENCE_CANARY_STEPS": "[0.25, 0.5, 1.0]",
                  "INFERENCE_CANARY_MIN_REQUESTS": "30", "INFERENCE_CANARY_MAX_DIVERGENCE": "1.0",
                  "INFERENCE_CANARY_P99_SLACK_MS": "100", "INFERENCE_CANARY_MAX_ACCURACY_DROP": "0.05",
                  "INFERENCE_FEATURE_TTL_S": "3600"},
    "registry": {"REGISTRY_OUTBOX_POLL_INTERVAL_S": "0.2"},
}
"""Settings that make the whole loop complete in a few minutes on two cores (README "Closed-loop demo")."""


class RedisProcess:
    """redis-server for the stack (append-only file in ``data_dir``, kept between runs)."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--appendonly", "yes", "--save", "", "--logfile", str(self.data_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        ping = ["redis-cli", "-p", str(self.port), "ping"]
        while subprocess.run(ping, capture_output=True).stdout.strip() != b"PONG":
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise StartError(f"redis-server did not start (log: {self.data_dir / 'redis.log'})")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def registry_tokens(data_dir: Path, tokens_file: Path) -> dict[str, str]:
    """The trainer, operator and gateway tokens: made with ``tributary-registry-cli`` on the first run, then reused.

    The gateway's token (operator role, named after the canary analysis that uses it) is how the
    gateway moves aliases: the registry is their only writer.
    """
    if tokens_file.is_file():
        kept = dict(json.loads(tokens_file.read_text()))
        if "inference" in kept:
            return kept
    cli = str(Path(sys.executable).parent / "tributary-registry-cli")
    env = {**os.environ, "REGISTRY_DATA_DIR": str(data_dir)}
    data_dir.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> str:
        done = subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
        if done.returncode != 0:
            raise StartError(f"tributary-registry-cli {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout.strip()

    run("migrate")
    tokens = {role: run("tokens", "create", "--name", f"demo-{role}", "--role", role).splitlines()[-1]
              for role in ("trainer", "operator")}
    tokens["inference"] = run("tokens", "create", "--name", "inference/canary-analysis", "--role",
                              "operator").splitlines()[-1]
    tokens_file.write_text(json.dumps(tokens))
    tokens_file.chmod(0o600)
    return tokens


def signing_key(keys_dir: Path, key_id: str = "demo-trainer") -> Path:
    """The trainer's artifact-signing key: made with ``tributary-trainer-cli keygen`` on the first run, then reused.

    The registry trusts the ``.pub`` files of ``keys_dir`` and accepts only signed artifacts, as a
    production registry should.
    """
    private = keys_dir / f"{key_id}.key"
    if private.is_file() and (keys_dir / f"{key_id}.pub").is_file():
        return private
    cli = str(Path(sys.executable).parent / "tributary-trainer-cli")
    done = subprocess.run([cli, "keygen", "--key-id", key_id, "--dir", str(keys_dir)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    if done.returncode != 0:
        raise StartError(f"tributary-trainer-cli keygen failed:\n{done.stdout}\n{done.stderr}")
    return private


class Demo:
    """The runner's side of the loop: the baseline, then the shift; everything else happens by itself."""

    def __init__(self, *, generator: Generator, state: LoopState, trainer_url: str, registry_url: str,
                 operator_token: str, baseline_rows: int, shift_at_s: float, since: datetime) -> None:
        self.generator = generator
        self.state = state
        self.trainer_url = trainer_url
        self.registry_url = registry_url
        self.operator_token = operator_token
        self.baseline_rows = baseline_rows
        self.shift_at_s = shift_at_s
        self.since = since
        self.phase = "collect"
        self.command_id: str | None = None
        self.serving_since: float | None = None

    def start(self) -> None:
        """Reuse a champion from an earlier run, or plan a baseline."""
        status, body = http_json(f"{self.registry_url}/v1/models/{MODEL}/aliases/champion", method="GET")
        if status == 200 and body.get("version"):
            self.state.champion = int(body["version"])
            say(f"v{self.state.champion} of {MODEL} is champion from an earlier run; no baseline needed")
            self._serving()
        else:
            say(f"collecting {self.baseline_rows} labelled applications for the baseline")

    def step(self) -> None:
        """Advance the plan (called about twice a second)."""
        if self.phase == "collect" and self.generator.counts.labels >= self.baseline_rows:
            self._baseline()
        elif self.phase == "training":
            self._await_baseline()
        elif (self.phase == "serving" and self.serving_since is not None
              and time.monotonic() - self.serving_since >= self.shift_at_s):
            self.generator.shift()
            self.state.shifted_at = self.generator.shifted_at
            self.phase = "shifted"
            say(f"SHIFT injected: a recession — {' and '.join(SHIFTED_FEATURES)} move (incomes -25%, "
                "debt ratios +0.2), and defaults now follow debt and region, no longer late payments")

    def _baseline(self) -> None:
        self.command_id = f"baseline-{self.since:%Y%m%dT%H%M%S}"
        status, body = http_json(f"{self.trainer_url}/v1/commands", {
            "model_name": MODEL, "dataset": DATASET, "start_time": self.since.isoformat(),
            "command_id": self.command_id, "note": "baseline of the closed-loop demo"})
        if status != 202:
            raise StartError(f"the trainer refused the baseline command: {status} {body}")
        say(f"baseline retrain command {self.command_id} sent to the trainer "
            f"({self.generator.counts.labels} labels so far)")
        self.phase = "training"

    def _await_baseline(self) -> None:
        status, body = http_json(f"{self.trainer_url}/v1/commands/{self.command_id}", method="GET")
        if status == 404:
            return
        outcome = body.get("outcome", {})
        version = outcome.get("version")
        if status != 200 or body.get("status") != "completed" or not version:
            raise StartError(f"the baseline did not produce a model: {status} {json.dumps(body)[:800]}")
        reason = f"baseline of the closed-loop demo ({self.command_id})"
        status, body = http_json(f"{self.registry_url}/v1/models/{MODEL}/aliases/champion",
                                 {"version": version, "reason": reason}, method="PUT", token=self.operator_token)
        if status != 200:
            raise StartError(f"the registry refused to make v{version} champion: {status} {body}")
        # The trainer made the first version a canary (no champion to compare with): it is the champion now.
        http_json(f"{self.registry_url}/v1/models/{MODEL}/aliases/canary?reason=baseline+is+champion",
                  method="DELETE", token=self.operator_token)
        say(f"baseline v{version} trained (auc {outcome.get('metrics', {}).get('auc', float('nan')):.3f}) "
            "and made champion")
        self._serving()

    def _serving(self) -> None:
        self.phase = "serving"
        self.serving_since = time.monotonic()
        say(f"the shift comes in {self.shift_at_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Start the stack, run the demo, stop everything on Ctrl-C, SIGTERM, ``--duration`` or promotion."""
    parser = argparse.ArgumentParser(description="Run the Tributary stack and its closed-loop demo in the foreground.")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: until Ctrl-C)")
    parser.add_argument("--rate", type=float, default=50, help="applications per second (0: no generator, no demo)")
    parser.add_argument("--no-loop", action="store_true", help="stream data only: no baseline, no shift")
    parser.add_argument("--shift-at", type=float, default=60,
                        help="seconds after the baseline champion serves until the shift is injected")
    parser.add_argument("--baseline-rows", type=int, default=1500, help="labelled applications before the baseline")
    parser.add_argument("--label-delay", type=float, default=2.0, help="seconds between an application and its label")
    parser.add_argument("--until-promoted", action="store_true",
                        help="stop once the post-shift version is champion (exit 0), or at --timeout (exit 1)")
    parser.add_argument("--timeout", type=float, default=900, help="with --until-promoted: seconds before giving up")
    parser.add_argument("--fresh", action="store_true",
                        help=f"wipe the state first ({', '.join(FRESH_DIRS)} and the tokens under {STATE})")
    parser.add_argument("--seed", type=int, default=7)
    port = lambda name, default: int(os.environ.get(name, default))  # noqa: E731
    parser.add_argument("--kafka-port", type=int, default=port("KAFKA_PORT", 9092))
    parser.add_argument("--ingest-port", type=int, default=port("INGEST_PORT", 8001))
    parser.add_argument("--registry-port", type=int, default=port("REGISTRY_PORT", 8082))
    parser.add_argument("--trainer-port", type=int, default=port("TRAINER_PORT", 8083))
    parser.add_argument("--drift-port", type=int, default=port("DRIFT_PORT", 8085))
    parser.add_argument("--inference-port", type=int, default=port("INFERENCE_PORT", 8003))
    args = parser.parse_args(argv)

    if args.fresh:
        for name in FRESH_DIRS:
            shutil.rmtree(STATE / name, ignore_errors=True)
        (STATE / "tokens.json").unlink(missing_ok=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    since = datetime.now(UTC)
    logs = STATE / "logs"
    broker = Broker(STATE / "kafka", port=args.kafka_port,
                    controller_port=int(os.environ.get("KAFKA_CONTROLLER_PORT", args.kafka_port + 1)))
    kafka = broker.bootstrap
    redis = RedisProcess(STATE / "redis", int(os.environ.get("REDIS_PORT", 0)) or free_port())
    registry_dir = STATE / "registry"
    model_repository = registry_dir / "triton"
    model_repository.mkdir(parents=True, exist_ok=True)
    triton = TritonServer(STATE / "triton" / "models", STATE / "triton", http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port())
    sync = RepositorySync(model_repository, triton)
    url = {name: f"http://127.0.0.1:{getattr(args, f'{name}_port')}"
           for name in ("ingest", "registry", "trainer", "drift", "inference")}
    started: list[ServiceProcess] = []
    threads: list[threading.Thread] = []
    background = threading.Event()
    generator: Generator | None = None
    timeline: Timeline | None = None
    state = LoopState()
    outcome = 0

    def service(name: str, env: dict[str, str]) -> ServiceProcess:
        return ServiceProcess(name, name, {**env, **DEMO_SETTINGS.get(name, {})}, ready_url=f"{url[name]}/readyz",
                              log_path=logs / f"{name}.log")

    def thread(target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        threads.append(t)

    try:
        say(f"starting Kafka on {kafka} (data in {broker.data_dir})")
        broker.start()
        say(f"starting Redis on {redis.url}")
        redis.start()
        tokens = registry_tokens(registry_dir, STATE / "tokens.json")
        key = signing_key(STATE / "signing-keys")
        services = [
            service("registry", {"REGISTRY_DATA_DIR": str(registry_dir), "REGISTRY_KAFKA_BOOTSTRAP": kafka,
                                 "REGISTRY_PORT": str(args.registry_port),
                                 "REGISTRY_TRITON_REPOSITORY": str(model_repository),
                                 "REGISTRY_SIGNING_KEYS_DIR": str(key.parent), "REGISTRY_REQUIRE_SIGNATURE": "true"}),
            service("ingest", {"INGEST_KAFKA_BOOTSTRAP": kafka, "INGEST_PORT": str(args.ingest_port)}),
            service("drift", {"DRIFT_KAFKA_BOOTSTRAP": kafka, "DRIFT_PORT": str(args.drift_port),
                              "DRIFT_STATE_DIR": str(STATE / "drift"), "DRIFT_REGISTRY_URL": url["registry"]}),
            service("trainer", {"TRAINER_KAFKA_BOOTSTRAP": kafka, "TRAINER_PORT": str(args.trainer_port),
                                "TRAINER_REGISTRY_URL": url["registry"], "TRAINER_REGISTRY_TOKEN": tokens["trainer"],
                                "TRAINER_REGISTRY_OPERATOR_TOKEN": tokens["operator"],
                                "TRAINER_TRITON_URL": triton.http_url, "TRAINER_SIGNING_KEY": str(key)}),
            service("inference", {
                "INFERENCE_KAFKA_BOOTSTRAP": kafka, "INFERENCE_PORT": str(args.inference_port),
                "INFERENCE_GRPC_PORT": str(free_port()), "INFERENCE_REDIS_URL": redis.url,
                "INFERENCE_TRITON_GRPC_URL": triton.grpc_url, "INFERENCE_TRITON_HTTP_URL": triton.http_url,
                "INFERENCE_FALLBACK": "onnxruntime",
                "INFERENCE_MODEL_REPOSITORY": str(model_repository), "INFERENCE_REGISTRY_URL": url["registry"],
                "INFERENCE_REGISTRY_TOKEN": tokens["inference"],
                "INFERENCE_MODEL_DATASETS": json.dumps({MODEL: DATASET})}),
        ]
        say(f"starting registry (data in {registry_dir}, log: {services[0].log_path})")
        services[0].start()
        started.append(services[0])
        say(f"starting Triton (CPU) on {triton.grpc_url}, serving the registry's repository {model_repository}")
        triton.repository.mkdir(parents=True, exist_ok=True)
        triton.start()
        loaded = sync.sync_once()
        say(f"Triton ready, models loaded: {', '.join(loaded) or 'none yet'}")
        thread(lambda: sync.run(background), "triton-sync")
        for s in services[1:]:
            say(f"starting {s.name} (log: {s.log_path})")
            s.start()
            started.append(s)
        say(f"ready: ingest {url['ingest']}, registry {url['registry']}, trainer {url['trainer']}, "
            f"drift {url['drift']}, inference {url['inference']} (each has /docs and /metrics)")
        status, answer = http_json(f"{url['ingest']}/v1/datasets/{DATASET}", SPEC, method="PUT")
        if status not in (200, 201):
            raise StartError(f"could not register the demo dataset: {status} {answer}")
        how = "registered" if status == 201 else "already registered, kept from the last run"
        say(f"dataset '{DATASET}' {how} (revision {answer['revision']})")
        demo: Demo | None = None
        if args.rate > 0:
            loop = not args.no_loop
            timeline = Timeline(kafka, MODEL, since=since.timestamp(), state=state)
            thread(timeline.run, "timeline")
            generator = Generator(url["ingest"], url["inference"] if loop else None, rate=args.rate,
                                  label_delay_s=args.label_delay, seed=args.seed)
            thread(generator.run, "generator")
            say(f"streaming ~{args.rate:.0f} applications/s into ingest; Ctrl-C stops everything")
            if loop:
                demo = Demo(generator=generator, state=state, trainer_url=url["trainer"],
                            registry_url=url["registry"], operator_token=tokens["operator"],
                            baseline_rows=args.baseline_rows, shift_at_s=args.shift_at, since=since)
                demo.start()
        t0 = time.monotonic()
        deadline = t0 + args.duration if args.duration else None
        give_up = t0 + args.timeout if args.until_promoted else None
        last = t0
        while not stopping.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if args.until_promoted and state.promoted.is_set():
                break
            if give_up is not None and now >= give_up:
                say(f"error: no new champion within --timeout {args.timeout:.0f} s (phase: "
                    f"{demo.phase if demo else '-'}; logs in {logs})")
                outcome = 1
                break
            stopping.wait(0.5)
            for s in started:
                if s.process is not None and s.process.poll() is not None:
                    raise StartError(f"{s.name} exited unexpectedly:\n{s.tail()}")
            if demo is not None:
                demo.step()
            if generator is not None and time.monotonic() - last >= 5:
                last = time.monotonic()
                c = generator.counts
                canary = "-" if state.canary is None else f"v{state.canary} at {state.canary_weight or 0:.0%}"
                say(f"progress: events accepted {c.accepted}, dead-lettered {c.rejected}, failed {c.failed}; "
                    f"predictions {c.predicted} (unserved {c.not_served}); labels {c.labels}; drift windows "
                    f"{state.windows} (drifted {state.drifted_windows}); champion "
                    f"{'-' if state.champion is None else f'v{state.champion}'}, canary {canary}")
    except KeyboardInterrupt:
        pass
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        outcome = 1
    finally:
        say("stopping")
        background.set()
        if generator is not None:
            generator.stop.set()
        if timeline is not None:
            timeline.stop.set()
        for t in threads:
            t.join(30)
        for s in reversed(started):
            s.stop()
        triton.stop()
        redis.stop()
        try:
            broker.stop()
        except StartError as exc:
            print(f"error: {exc}", file=sys.stderr)
            outcome = 1
        say("stopped: every process of the stack has exited")
    if generator is not None:
        c = generator.counts
        say(f"total: events accepted {c.accepted}, dead-lettered {c.rejected}, failed {c.failed}; "
            f"predictions {c.predicted}; labels {c.labels}")
    if state.recovered_s is not None:
        say(f"drift-to-recovery: shift onset -> new champion v{state.champion} in {state.recovered_s:.1f} s")
    return outcome


if __name__ == "__main__":
    sys.exit(main())
