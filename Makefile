# Reliability entry points (docs/reliability.md).  The package itself is built
# with `pip install -e . --no-build-isolation`; nothing here touches the
# in-place extension modules.
#
#   make sanitize          whole test suite against an ASan+UBSan build (build/asan)
#   make sanitize-subset   the CI subset of the same
#   make tsan              ring_stress under ThreadSanitizer (RECORDS writes, default 15M = over 10M records)
#   make native-asan       ring_stress under ASan+UBSan+LSan
#   make native-stress     both, with a reduced count (as the test suite does)
#   make fuzz              every atheris harness for FUZZ_RUNS executions (ASan build)
#   make fuzz-trace | fuzz-attach | fuzz-minidump | fuzz-live-ring | fuzz-spill    one harness
#   make fuzz-replay       replay the corpora through the harness functions (no atheris)
#   make clean-native      remove build/native

PYTHON ?= python
ifeq ($(origin CC),default)
CC := gcc
endif
RECORDS ?= 15000000
FUZZ_RUNS ?= 1000000
FUZZ_JOBS ?= 2
FUZZ_FLAGS ?=

SRC := mdstream/src/ring.c mdstream/src/span.c mdstream/src/platform_posix.c
HDR := $(wildcard mdstream/include/mdstream/*.h) mdstream/src/platform.h
NATIVE := build/native
STRESS_CFLAGS := -std=gnu11 -g -Wall -Wextra -Wno-unused-parameter -pthread -D_GNU_SOURCE \
	-Imdstream/include -Imdstream/src

FUZZ_TARGETS := trace attach minidump live_ring spill

.PHONY: sanitize sanitize-subset asan-build tsan native-asan native-stress fuzz fuzz-replay \
	$(addprefix fuzz-,$(subst _,-,$(FUZZ_TARGETS))) clean-native

sanitize:
	scripts/sanitize.sh

sanitize-subset:
	MDSTREAM_SANITIZE_SUBSET=1 scripts/sanitize.sh

asan-build:
	scripts/sanitize.sh --build-only >/dev/null

$(NATIVE):
	mkdir -p $@

$(NATIVE)/ring_stress_tsan: tests/native/ring_stress.c $(SRC) $(HDR) | $(NATIVE)
	$(CC) $(STRESS_CFLAGS) -O1 -fsanitize=thread -Wno-tsan tests/native/ring_stress.c $(SRC) -o $@

$(NATIVE)/ring_stress_asan: tests/native/ring_stress.c $(SRC) $(HDR) | $(NATIVE)
	$(CC) $(STRESS_CFLAGS) -O1 -fsanitize=address,undefined -fno-omit-frame-pointer \
		-fno-sanitize-recover=all tests/native/ring_stress.c $(SRC) -o $@

$(NATIVE)/ring_stress: tests/native/ring_stress.c $(SRC) $(HDR) | $(NATIVE)
	$(CC) $(STRESS_CFLAGS) -O2 tests/native/ring_stress.c $(SRC) -o $@

tsan: $(NATIVE)/ring_stress_tsan
	TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1" $< --records $(RECORDS) --stall-s 120

native-asan: $(NATIVE)/ring_stress_asan
	ASAN_OPTIONS="detect_leaks=1:halt_on_error=1" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
		$< --records $(RECORDS)

native-stress:
	$(PYTHON) -m pytest -q tests/test_native_stress.py

# Each harness runs under the ASan+UBSan build of the extension with the ASan
# runtime preloaded; FUZZ_JOBS harnesses at a time (the machine has 2 cores).
# Crashes are written to fuzz/artifacts/<target>/, logs to build/fuzz/logs/.
fuzz: asan-build
	@mkdir -p build/fuzz/logs
	@printf '%s\n' $(FUZZ_TARGETS) | xargs -P $(FUZZ_JOBS) -I{} \
		sh -c 'scripts/fuzz.sh {} -runs=$(FUZZ_RUNS) $(FUZZ_FLAGS) >build/fuzz/logs/{}.log 2>&1; \
		       echo "fuzz {}: exit $$? ($$(grep -E "^#[0-9]+ +DONE|Done [0-9]+ runs" build/fuzz/logs/{}.log | tail -1))"'

fuzz-trace: asan-build
	scripts/fuzz.sh trace -runs=$(FUZZ_RUNS) $(FUZZ_FLAGS)

fuzz-attach: asan-build
	scripts/fuzz.sh attach -runs=$(FUZZ_RUNS) $(FUZZ_FLAGS)

fuzz-minidump: asan-build
	scripts/fuzz.sh minidump -runs=$(FUZZ_RUNS) $(FUZZ_FLAGS)

fuzz-spill: asan-build
	scripts/fuzz.sh spill -runs=$(FUZZ_RUNS) $(FUZZ_FLAGS)

fuzz-live-ring: asan-build
	scripts/fuzz.sh live_ring -runs=$(FUZZ_RUNS) $(FUZZ_FLAGS)

fuzz-replay:
	$(PYTHON) -m pytest -q tests/test_fuzz_smoke.py

clean-native:
	rm -rf $(NATIVE)
