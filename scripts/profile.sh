#!/usr/bin/env bash
# `make profile`: boots the test VM, runs the workload (KDBT_WORKLOAD or
# tests/vm/short-workload.sh) under translation with kdbt's count client, and
# writes the reports into $KDBT_BUILD/profile: the hottest functions and
# blocks, a summary, a plot (docs/reports.md).
exec bash "$(dirname "$0")/client-report.sh" profile
