#!/bin/sh
# Build dist/pyslirp_<version>_all.deb from the source tree with dpkg-deb.
#
#   packaging/deb/build-deb.sh SRCDIR BUILDDIR OUTDIR
#
# Reproducible: the package version comes from packaging/deb/changelog (its
# upstream part must equal __version__ in pyslirp/__init__.py), every mtime is
# SOURCE_DATE_EPOCH (default: the changelog entry's date), owners are root
# (dpkg-deb --root-owner-group), modes are set explicitly, gzip runs with -n
# and dpkg-deb sorts the archive members. No network access.
set -eu

SRC=$(cd "$1" && pwd)
BUILD=$2
OUT=$3
DEB=$SRC/packaging/deb

umask 022
export LC_ALL=C TZ=UTC

# The top entry of the changelog (parsed here: dpkg-parsechangelog is in
# dpkg-dev, and dpkg-deb alone is enough to build).
VERSION=$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$SRC/pyslirp/__init__.py")
DEB_VERSION=$(sed -n '1s/^pyslirp (\([^)]*\)) .*/\1/p' "$DEB/changelog")
TRAILER=$(sed -n '/^ -- /{p;q}' "$DEB/changelog")
MAINTAINER=$(echo "$TRAILER" | sed 's/^ -- \(.*>\)  .*$/\1/')
CHANGELOG_DATE=$(echo "$TRAILER" | sed 's/^ -- .*>  //')
if [ -z "$VERSION" ] || [ "${DEB_VERSION%-*}" != "$VERSION" ]; then
    echo "build-deb: packaging/deb/changelog is at $DEB_VERSION but pyslirp/__init__.py says $VERSION:" >&2
    echo "build-deb: add a changelog entry (dch -c packaging/deb/changelog -v $VERSION-1)" >&2
    exit 1
fi
: "${SOURCE_DATE_EPOCH:=$(date -d "$CHANGELOG_DATE" +%s)}"
export SOURCE_DATE_EPOCH

ROOT=$BUILD/root
rm -rf "$BUILD"
mkdir -p "$ROOT" "$OUT"

# dir MODE PATH...: directories; file MODE SRC DEST: one file.
dir() {
    mode=$1
    shift
    install -d -m "$mode" "$@"
}
file() {
    install -D -m "$1" "$2" "$ROOT$3"
}

# The Python package: every module, nothing else (no byte-code, no tests).
(cd "$SRC" && find pyslirp -name '*.py' -type f | sort) | while read -r module; do
    file 0644 "$SRC/$module" "/usr/lib/pyslirp/$module"
done
file 0755 "$DEB/pyslirp.launcher" /usr/bin/pyslirp

file 0644 "$SRC/pyslirp.toml" /etc/pyslirp/pyslirp.toml
file 0644 "$DEB/pyslirp.default" /etc/default/pyslirp
file 0755 "$DEB/pyslirp.init" /etc/init.d/pyslirp
file 0644 "$DEB/pyslirp.service" /lib/systemd/system/pyslirp.service
file 0644 "$DEB/pyslirp@.service" /lib/systemd/system/pyslirp@.service

dir 0755 "$ROOT/usr/share/man/man8" "$ROOT/usr/share/doc/pyslirp"
sed "s/@VERSION@/$VERSION/" "$DEB/pyslirp.8" | gzip -9n > "$ROOT/usr/share/man/man8/pyslirp.8.gz"
gzip -9n < "$DEB/changelog" > "$ROOT/usr/share/doc/pyslirp/changelog.Debian.gz"
file 0644 "$DEB/copyright" /usr/share/doc/pyslirp/copyright
if [ -f "$SRC/README.md" ]; then
    file 0644 "$SRC/README.md" /usr/share/doc/pyslirp/README.md
fi
file 0644 "$DEB/lintian-overrides" /usr/share/lintian/overrides/pyslirp
chmod 0644 "$ROOT/usr/share/man/man8/pyslirp.8.gz" "$ROOT/usr/share/doc/pyslirp/changelog.Debian.gz"

# Control area.
dir 0755 "$ROOT/DEBIAN"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -print | sed 's,^\./,,' | sort \
    | xargs md5sum) > "$ROOT/DEBIAN/md5sums"
INSTALLED_SIZE=$(du -s -k --apparent-size --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@DEB_VERSION@/$DEB_VERSION/" \
    -e "s/@MAINTAINER@/$MAINTAINER/" \
    -e "s/@INSTALLED_SIZE@/$INSTALLED_SIZE/" "$DEB/control.in" > "$ROOT/DEBIAN/control"
install -m 0644 "$DEB/conffiles" "$ROOT/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$DEB/$script" "$ROOT/DEBIAN/$script"
done
chmod 0644 "$ROOT/DEBIAN/md5sums" "$ROOT/DEBIAN/control"

find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

DEBFILE=$OUT/pyslirp_${DEB_VERSION}_all.deb
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEBFILE" >/dev/null
echo "$DEBFILE"
