#!/usr/bin/env bash
# The busybox workload of make user-check, timed: translated / native wall-time ratio under
# each call/ret policy (Transparent, Fast), measured side by side (interleaved) in one run.
# Extra arguments go to `kdbt-user bench` (e.g. --repeat 5).
exec bash "$(dirname "$0")/kdbt-user.sh" bench "$@"
