#!/usr/bin/env bash
# Load average: uptime, CPU count and load over 1, 5 and 15 minutes
set -euo pipefail
echo "cpus: $(nproc 2>/dev/null || echo unknown)"
cat /proc/loadavg
uptime 2>/dev/null || true
