#!/usr/bin/env bash
# Disk usage: free space per mounted filesystem and the largest folders under /tmp
set -euo pipefail
echo "== filesystems =="
df -h -x tmpfs -x devtmpfs 2>/dev/null || df -h
echo
echo "== largest entries in /tmp =="
du -sh /tmp/* 2>/dev/null | sort -rh | head -5 || true
