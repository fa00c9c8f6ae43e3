# kdbt: top-level commands. Kbuild (not this file) describes kdbt.ko.
# Every target installs what it is missing first (scripts/setup.sh).
SHELL := /bin/bash
.PHONY: all setup kernel module run coverage profile test host-test vm-test user-check bench-engine bench clean

all: module

setup:
	@bash scripts/setup.sh

kernel: setup
	@bash scripts/kernel.sh >/dev/null

module: setup
	@bash scripts/module.sh

run: setup
	@bash scripts/run.sh

coverage: setup
	@bash scripts/coverage.sh

profile: setup
	@bash scripts/profile.sh

test: setup
	@bash scripts/test.sh

host-test: setup
	@cargo test --release

vm-test: setup
	@bash scripts/vm-test.sh

user-check: setup
	@bash scripts/user-check.sh

bench-engine: setup
	@bash scripts/bench-engine.sh

bench: setup
	@bash scripts/bench.sh

clean:
	rm -rf build target
