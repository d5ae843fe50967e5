# pyslirp: build the shipped forms.
#
#   make deb      dist/pyslirp_<version>-<revision>_all.deb (dpkg-deb; no network)
#   make pyz      dist/pyslirp.pyz                  (python3 -m zipapp; pinned wheels)
#   make wheels   download the pinned wheels into dist/wheels (hashes checked)
#   make wheel    dist/pyslirp-<version>-py3-none-any.whl (pip wheel)
#   make lintian  build the .deb and run lintian on it
#   make check    the packaging tests (tests/test_packaging.py, tests/test_pyz.py)
#   make clean
#
# The version has one home: __version__ in pyslirp/__init__.py. The .deb's
# version is the top entry of packaging/deb/changelog (<version>-<revision>);
# build-deb.sh refuses to build when the two disagree.
#
# Reproducible: SOURCE_DATE_EPOCH (default: the Debian changelog's date) is the
# mtime of every file in the .deb and the .pyz; both list their members sorted
# with fixed owners and modes, so two builds of one tree are byte-identical.
#
# lintian: no errors and no warnings on dist/pyslirp_*.deb (`make lintian`
# fails on either). Two tags are overridden on purpose in
# packaging/deb/lintian-overrides: init.d-script-should-always-start-service
# (ENABLED=no is the default in /etc/default/pyslirp: a fresh install has no
# serial port configured) and initial-upload-closes-no-bugs (not uploaded to
# Debian: no ITP bug). packaging/deb/README.md explains both, and the one
# pedantic tag left (repeated-path-segment: /usr/lib/pyslirp/pyslirp/).

PYTHON      ?= python3
DIST        ?= dist
BUILD       ?= build
WHEELS      ?= $(DIST)/wheels
DEB_VERSION := ${shell sed -n '1s/^pyslirp (\([^)]*\)) .*/\1/p' packaging/deb/changelog}
DEB         := $(DIST)/pyslirp_$(DEB_VERSION)_all.deb
PYZ         := $(DIST)/pyslirp.pyz

.PHONY: all deb pyz wheels wheel lintian check clean

all: deb pyz

deb:
	sh packaging/deb/build-deb.sh . $(BUILD)/deb $(DIST)

pyz:
	mkdir -p $(DIST)
	$(PYTHON) packaging/pyz/build_pyz.py --wheels $(WHEELS) --build $(BUILD)/pyz \
	    --zip $(BUILD)/pyslirp.zip
	$(PYTHON) -m zipapp $(BUILD)/pyslirp.zip --python "/usr/bin/env python3" --output $(PYZ)
	chmod 0755 $(PYZ)
	@echo $(PYZ)

wheels:
	$(PYTHON) packaging/pyz/build_pyz.py --wheels $(WHEELS) --download-only

wheel:
	$(PYTHON) -m pip wheel --no-deps --wheel-dir $(DIST) .

lintian: deb
	lintian --info --display-info --fail-on error,warning $(DEB)

check:
	$(PYTHON) -m pytest -q tests/test_packaging.py tests/test_pyz.py

clean:
	rm -rf $(BUILD) $(DIST)/pyslirp_*.deb $(PYZ) $(DIST)/pyslirp-*.whl
