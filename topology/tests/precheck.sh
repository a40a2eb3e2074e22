#!/usr/bin/env bash
# topology/tests/precheck.sh — fast checks of the repository's set-up
# contract, run by topology/test.sh before the engines and cargo:
#
#   * README.md has a `## Quickstart` whose first fenced block holds exactly
#     two commands (run the system, run the tests), both executable scripts
#     of this repository;
#   * .ci/run is an executable bash script that runs the second one verbatim;
#   * every shell script of topology/ and .ci/ parses (bash -n);
#   * docker-compose.yml parses and has the engines, the topology init
#     service and one service per role, each role with a /healthz
#     healthcheck, every depends_on pointing at a defined service, no
#     default token secret
#     (needs python3 with PyYAML; says so loudly when it is missing).
#
# Exit 0 iff everything checked passed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 1
FAILURES=0

ok() { printf '[precheck] ok: %s\n' "$*" >&2; }
bad() { printf '[precheck] FAILED: %s\n' "$*" >&2; FAILURES=$((FAILURES + 1)); }

# -------------------------------------------------------- README + .ci/run --

# The first fenced block after `## Quickstart`, up to the next `## ` heading.
quickstart_commands() {
  awk '
    /^## / { in_section = ($0 ~ /^## Quickstart[[:space:]]*$/); next }
    in_section && /^```/ { if (in_block) exit; in_block = 1; next }
    in_section && in_block && NF { print }
  ' README.md
}

if [[ ! -f README.md ]]; then
  bad "README.md is missing"
else
  mapfile -t commands < <(quickstart_commands)
  if ((${#commands[@]} != 2)); then
    bad "README.md: the first code block of '## Quickstart' must hold exactly two commands, found ${#commands[@]}: ${commands[*]:-<none>}"
  else
    ok "README.md Quickstart: '${commands[0]}' / '${commands[1]}'"
    for command in "${commands[@]}"; do
      read -r -a words <<<"$command"
      script=${words[0]}
      [[ $script == bash || $script == sh ]] && script=${words[1]:-}
      if [[ -f $script ]]; then
        ok "Quickstart command '$command' refers to $script"
      else
        bad "Quickstart command '$command': $script is not a file of the repository"
      fi
      if [[ ${words[0]} != bash && ${words[0]} != sh && ! -x $script ]]; then
        bad "$script is not executable (git update-index --chmod=+x $script)"
      fi
    done
    if [[ ! -f .ci/run ]]; then
      bad ".ci/run is missing"
    else
      [[ -x .ci/run ]] || bad ".ci/run is not executable"
      [[ $(head -n 1 .ci/run) == '#!/usr/bin/env bash' ]] || bad ".ci/run must start with #!/usr/bin/env bash"
      if grep -qxF -- "${commands[1]}" .ci/run || grep -qxF -- "exec ${commands[1]}" .ci/run; then
        ok ".ci/run runs the second Quickstart command verbatim"
      else
        bad ".ci/run does not contain the second Quickstart command '${commands[1]}' on a line of its own"
      fi
    fi
  fi
fi

# ------------------------------------------------------------ shell syntax --

for script in topology/*.sh topology/tests/*.sh .ci/run; do
  [[ -f $script ]] || continue
  if bash -n "$script"; then ok "bash -n $script"; else bad "bash -n $script"; fi
done

# ---------------------------------------------------------- docker-compose --

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import yaml' >/dev/null 2>&1; then
  printf '[precheck] NOT CHECKED: docker-compose.yml (needs python3 with PyYAML: apt-get install -y python3-yaml)\n' >&2
else
  if python3 - docker-compose.yml <<'PY'; then ok "docker-compose.yml"; else bad "docker-compose.yml (see above)"; fi
import sys
import yaml

with open(sys.argv[1]) as f:
    doc = yaml.safe_load(f)
services = doc.get("services") or {}
problems = []
engines = {"kafka", "cassandra", "opensearch"}
roles = {"edge", "fanout", "persist", "index", "api"}
for name in sorted(engines | roles | {"topology"}):
    if name not in services:
        problems.append(f"service '{name}' is missing")
for name, service in services.items():
    deps = service.get("depends_on") or {}
    for dep in deps:
        if dep not in services:
            problems.append(f"{name}: depends_on unknown service '{dep}'")
    if "image" not in service and "build" not in service:
        problems.append(f"{name}: no image and no build")
topology = services.get("topology", {})
if topology.get("command") != ["topology", "apply"]:
    problems.append("topology: command must be ['topology', 'apply']")
for name in sorted(roles & services.keys()):
    service = services[name]
    if service.get("command") != [name]:
        problems.append(f"{name}: command must be ['{name}']")
    test = " ".join(map(str, (service.get("healthcheck") or {}).get("test", [])))
    if "/healthz" not in test:
        problems.append(f"{name}: no /healthz healthcheck")
    deps = service.get("depends_on") or {}
    if deps.get("topology", {}).get("condition") != "service_completed_successfully":
        problems.append(f"{name}: must start after topology completed successfully")
    env = service.get("environment") or {}
    for key in ("CHATPIPE_KAFKA_BROKERS", "CHATPIPE_CASSANDRA", "CHATPIPE_ELASTICSEARCH_URL"):
        if key not in env:
            problems.append(f"{name}: {key} not set")
    for key, value in env.items():
        if key.endswith("_LISTEN") and not str(value).startswith("0.0.0.0:"):
            problems.append(f"{name}: {key}={value} must bind 0.0.0.0 inside the container")
    # No built-in secret: only the operator's variable, never a default value.
    secret = str(env.get("CHATPIPE_TOKEN_SECRET", ""))
    if secret not in ("", "${CHATPIPE_TOKEN_SECRET:-}", "${CHATPIPE_TOKEN_SECRET}") and not secret.startswith("${CHATPIPE_TOKEN_SECRET:?"):
        problems.append(f"{name}: CHATPIPE_TOKEN_SECRET must not have a default value (there is no built-in secret)")
    build = service.get("build") or {}
    if build.get("dockerfile") != "topology/docker/Dockerfile":
        problems.append(f"{name}: must build topology/docker/Dockerfile")
ports = {
    "kafka": "127.0.0.1:9092:9092",
    "cassandra": "127.0.0.1:9042:9042",
    "opensearch": "127.0.0.1:9200:9200",
    "edge": "127.0.0.1:8080:8080",
    "api": "127.0.0.1:8090:8090",
}
for name, port in ports.items():
    if port not in (services.get(name, {}).get("ports") or []):
        problems.append(f"{name}: must publish {port}")
for problem in problems:
    print(f"[precheck]   {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
  if [[ ! -f topology/docker/Dockerfile ]]; then bad "topology/docker/Dockerfile is missing"; fi
fi

if ((FAILURES)); then
  printf '[precheck] %d check(s) FAILED\n' "$FAILURES" >&2
  exit 1
fi
printf '[precheck] all checks passed\n' >&2
