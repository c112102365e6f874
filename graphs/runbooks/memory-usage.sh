#!/usr/bin/env bash
# Memory usage: total, used and available memory, and the biggest processes
set -euo pipefail
echo "== memory =="
free -m 2>/dev/null || head -5 /proc/meminfo
echo
echo "== top processes by memory =="
ps -eo pid,rss,comm --sort=-rss 2>/dev/null | head -6 || true
