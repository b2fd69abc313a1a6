#!/usr/bin/env python3
"""Checks Dockerfile, compose.yaml and deploy/nginx.conf without a container
engine (none runs on the CI machine): the rules docs/operations.md states
for them ("Container"). Needs PyYAML (Debian: python3-yaml)."""

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def dockerfile_instructions(text):
    """(instruction, arguments) per logical line: continuations joined,
    comments and the parser directive skipped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    check(current == "", "Dockerfile ends inside a continued line")
    return out


instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
froms = [args for kind, args in instructions if kind == "FROM"]
check(len(froms) >= 2, "Dockerfile: a multi-stage build (a builder and a runtime)")
check(froms and re.match(r"rust:1\.\d+", froms[0]), "Dockerfile: the builder pins a Rust version")
last = max(i for i, (kind, _) in enumerate(instructions) if kind == "FROM")
runtime = instructions[last:]
kinds = [kind for kind, _ in runtime]
for required in ["USER", "VOLUME", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"]:
    check(required in kinds, f"Dockerfile runtime stage: {required}")
args = {kind: a for kind, a in runtime}
check(args.get("USER", "root") not in ("root", "0"), "Dockerfile: runs as a user without privileges")
check("/data" in args.get("VOLUME", ""), "Dockerfile: VOLUME /data")
check(args.get("EXPOSE") == "8000", "Dockerfile: EXPOSE 8000")
check("/healthz" in args.get("HEALTHCHECK", ""), "Dockerfile: HEALTHCHECK on /healthz")
check("0.0.0.0:8000" in " ".join(a for k, a in runtime if k == "ENV"), "Dockerfile: listens on 0.0.0.0:8000")
check(any(k == "RUN" and "--locked" in a for k, a in instructions), "Dockerfile: cargo build --locked")
check(any(k == "COPY" and "--from=" in a for k, a in runtime), "Dockerfile: the runtime copies from the builder")

compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
services = compose.get("services", {})
check("redis" in services, "compose: a redis service")
redis_cmd = " ".join(services.get("redis", {}).get("command", []))
check("--appendonly yes" in redis_cmd, "compose: Redis with AOF on")
nodes = [s for s in services.values() if s.get("build") == "."]
check(len(nodes) == 2, "compose: two bachata nodes built from this repository")
for node in nodes:
    env = node.get("environment", {})
    check(env.get("BACHATA_STORE") == "redis", "compose: the nodes use --store redis")
    check(str(env.get("BACHATA_REDIS_URL", "")).startswith("redis://redis:"), "compose: the nodes use the redis service")
lb = services.get("lb", {})
check(any("8000:8000" in p for p in lb.get("ports", [])), "compose: the load balancer publishes 8000")
check(any("nginx.conf" in v for v in lb.get("volumes", [])), "compose: the load balancer's config is mounted")

nginx = (ROOT / "deploy" / "nginx.conf").read_text()
check(nginx.count("{") == nginx.count("}"), "nginx.conf: balanced braces")
for name in ["bachata-a:8000", "bachata-b:8000"]:
    check(name in nginx, f"nginx.conf: upstream {name}")
check("proxy_set_header Upgrade" in nginx, "nginx.conf: passes WebSocket upgrades")
check("$http_host" in nginx, "nginx.conf: passes Host with its port (the Origin check compares them)")

if failures:
    for f in failures:
        print("lint-container: missing:", f, file=sys.stderr)
    sys.exit(1)
print("lint-container: Dockerfile, compose.yaml and deploy/nginx.conf pass")
