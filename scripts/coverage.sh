#!/usr/bin/env bash
# `make coverage`: boots the test VM, runs the workload (KDBT_WORKLOAD or
# tests/vm/short-workload.sh) under translation with kdbt's coverage client,
# and writes the reports into $KDBT_BUILD/coverage: an lcov tracefile,
# genhtml's HTML, tables per function and file, a summary (docs/reports.md).
exec bash "$(dirname "$0")/client-report.sh" coverage
