#!/usr/bin/env bash
# Real Apache Kafka (KRaft, one broker+controller) for local runs and tests.
#
#   deploy/kafka.sh fetch    resolve the broker jars from Maven Central into the cache (idempotent)
#   deploy/kafka.sh start    fetch if needed, format storage on first start, start, wait until it answers
#   deploy/kafka.sh stop     controlled shutdown (SIGTERM), SIGKILL only after KAFKA_STOP_TIMEOUT seconds
#   deploy/kafka.sh status   exit 0 when the broker of KAFKA_DATA_DIR is running
#   deploy/kafka.sh classpath
#
# Environment (all optional):
#   KAFKA_DATA_DIR          durable state: logs, metadata, pid, broker.log   [<repo>/.tributary/kafka]
#   KAFKA_PORT              client listener on 127.0.0.1                     [9092]
#   KAFKA_CONTROLLER_PORT   KRaft controller listener on 127.0.0.1           [9093]
#   KAFKA_EXTERNAL_PORT     optional second client listener on 127.0.0.1, for clients that reach
#                           the broker through another address (a proxy, NAT)   [none]
#   KAFKA_EXTERNAL_ADVERTISED  host:port the external listener advertises   [127.0.0.1:KAFKA_EXTERNAL_PORT]
#   KAFKA_HEAP              JVM heap                                         [512m]
#   KAFKA_START_TIMEOUT     seconds to wait for the broker to answer         [120]
#   KAFKA_STOP_TIMEOUT      seconds to wait for a controlled shutdown        [60]
#   TRIBUTARY_CACHE         where the jars are cached                        [~/.cache/tributary]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
pom="$here/kafka/pom.xml"
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
cache="${TRIBUTARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tributary}"
libs="$cache/kafka-$kafka_version/libs"
data="${KAFKA_DATA_DIR:-$repo/.tributary/kafka}"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-9093}"
external="${KAFKA_EXTERNAL_PORT:-}"
external_advertised="${KAFKA_EXTERNAL_ADVERTISED:-127.0.0.1:$external}"
heap="${KAFKA_HEAP:-512m}"
start_timeout="${KAFKA_START_TIMEOUT:-120}"
stop_timeout="${KAFKA_STOP_TIMEOUT:-60}"
pidfile="$data/broker.pid"
logfile="$data/broker.log"

say() { echo "kafka: $*" >&2; }
die() { say "error: $*"; exit 1; }

fetch() {
  if [[ -f "$libs/.complete" ]]; then return 0; fi
  command -v mvn >/dev/null || die "Maven (mvn) is required to fetch the Kafka broker; install it (apt-get install maven)"
  command -v java >/dev/null || die "Java 17+ is required to run the Kafka broker; install it (apt-get install openjdk-17-jre-headless)"
  say "resolving org.apache.kafka:kafka_2.13:$kafka_version from Maven Central into $libs"
  rm -rf "$libs.partial"
  mkdir -p "$libs.partial"
  mvn -B -q -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs.partial" >&2 \
    || die "mvn could not resolve the Kafka broker (see the output above)"
  ls "$libs.partial"/kafka_2.13-*.jar >/dev/null 2>&1 || die "mvn finished but no kafka_2.13 jar arrived in $libs.partial"
  touch "$libs.partial/.complete"
  rm -rf "$libs"
  mv "$libs.partial" "$libs"
  say "broker jars ready ($(ls "$libs" | wc -l) files)"
}

running_pid() {
  [[ -f "$pidfile" ]] || return 1
  local pid
  pid="$(cat "$pidfile")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_config() {
  cat >"$data/server.properties" <<EOF
# Written by deploy/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport${external:+,EXTERNAL://127.0.0.1:$external}
advertised.listeners=PLAINTEXT://127.0.0.1:$port${external:+,EXTERNAL://$external_advertised}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT${external:+,EXTERNAL:PLAINTEXT}
log.dirs=$data/logs
metadata.log.dir=$data/metadata
# Topics come from the catalogue in schemas/ (services create them at start-up), never by accident.
auto.create.topics.enable=false
num.partitions=3
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
EOF
}

start() {
  fetch
  if pid="$(running_pid)"; then say "already running (pid $pid) on 127.0.0.1:$port"; return 0; fi
  if port_open "$port"; then die "127.0.0.1:$port is taken by another process; set KAFKA_PORT"; fi
  if port_open "$cport"; then die "127.0.0.1:$cport is taken by another process; set KAFKA_CONTROLLER_PORT"; fi
  if [[ -n "$external" ]] && port_open "$external"; then
    die "127.0.0.1:$external is taken by another process; set KAFKA_EXTERNAL_PORT"
  fi
  mkdir -p "$data/logs" "$data/metadata"
  write_config
  local cp="$libs/*"
  local log4j="-Dlog4j2.configurationFile=$here/kafka/log4j2.properties"
  if [[ ! -f "$data/metadata/meta.properties" ]]; then
    local cluster_id
    cluster_id="$(java -cp "$cp" "$log4j" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    say "formatting KRaft storage in $data (cluster $cluster_id)"
    java -cp "$cp" "$log4j" kafka.tools.StorageTool format --standalone \
      -t "$cluster_id" -c "$data/server.properties" >>"$logfile" 2>&1 \
      || { tail -20 "$logfile" >&2; die "formatting storage failed"; }
  fi
  say "starting broker on 127.0.0.1:$port (data in $data)"
  local mark
  mark="$(wc -c <"$logfile" 2>/dev/null || echo 0)"
  nohup java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -Djava.awt.headless=true "$log4j" \
    -cp "$cp" kafka.Kafka "$data/server.properties" >>"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  local pid=$! waited=0
  until tail -c +"$((mark + 1))" "$logfile" | grep -q "Kafka Server started" && port_open "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -40 "$logfile" >&2
      rm -f "$pidfile"
      die "broker exited during start-up (log above, full log in $logfile)"
    fi
    if ((waited >= start_timeout * 5)); then
      tail -40 "$logfile" >&2
      die "broker did not answer on 127.0.0.1:$port within ${start_timeout}s"
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  say "ready on 127.0.0.1:$port (pid $pid)"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then say "not running"; rm -f "$pidfile"; return 0; fi
  say "stopping broker (pid $pid)"
  kill -TERM "$pid"
  local waited=0
  while kill -0 "$pid" 2>/dev/null; do
    if ((waited >= stop_timeout * 5)); then
      say "no controlled shutdown after ${stop_timeout}s; killing"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  rm -f "$pidfile"
  say "stopped"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if pid="$(running_pid)"; then say "running (pid $pid) on 127.0.0.1:$port"; else say "not running"; exit 1; fi ;;
  classpath) fetch; echo "$libs/*" ;;
  *) echo "usage: $0 fetch|start|stop|status|classpath" >&2; exit 2 ;;
esac
