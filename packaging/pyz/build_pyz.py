#!/usr/bin/env python3
"""Assemble the single-file pyslirp (dist/pyslirp.pyz) for air-gapped machines.

Theory of operation.  A zip application is a zip file whose ``__main__.py``
Python runs when given the file (``python3 pyslirp.pyz /dev/ttyUSB0``);
zipimport loads every pure-Python module straight from the archive.  So the
archive carries pyslirp's own modules and the pure-Python packages it may need
on an old machine: pyserial (real serial ports) and tomli (reading the TOML
configuration on Python < 3.11; ``pyslirp.compat`` prefers the standard
``tomllib`` where it exists).

Steps, each one checkable:

1. The wheels named in ``packaging/pyz/requirements.txt`` (exact pins, each
   with its sha256) are looked up in a cache directory (``dist/wheels``).
   Only when one is missing does ``pip download --require-hashes --no-deps
   --only-binary=:all:`` fetch them, so a second build needs no network.  The
   hashes are checked again here, whichever way the files came.
2. A staging directory (``build/pyz``) receives pyslirp's ``*.py`` files, the
   wheels' contents (minus ``*.data/``: scripts and headers) and the
   ``__main__.py`` from this folder.
3. A plain zip is written from the staging directory with members sorted, one
   fixed timestamp (``SOURCE_DATE_EPOCH``, by default the date of the Debian
   changelog's top entry) and fixed modes, so the same tree always gives the
   same bytes (stored uncompressed: zipimport then needs no zlib).
   ``python3 -m zipapp build/pyslirp.zip -p "/usr/bin/env
   python3" -o dist/pyslirp.pyz`` (the Makefile) then prepends the shebang
   line; zipapp itself would store the files in directory order and with
   their own mtimes.

Standard library only; runs on Python 3.7+.
"""

import argparse
import email.utils
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
ZIP_EPOCH = 315532800  # 1980-01-01T00:00:00Z: the earliest time a zip entry can hold


class BuildError(Exception):
    """A step failed; the message says which and what to do."""


class Requirement(object):
    def __init__(self, name, version, hashes):
        self.name = name
        self.version = version
        self.hashes = hashes

    @property
    def wheel_prefix(self):
        # Wheel file names use the normalised project name with "_" (PEP 427).
        return "%s-%s-" % (re.sub(r"[-_.]+", "_", self.name).lower(), self.version)


def parse_requirements(path):
    """``name==version --hash=sha256:HEX ...`` lines, with ``\\`` continuations."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    logical = []
    current = ""
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()  # pip: "#" after whitespace starts a comment
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    requirements = []
    for entry in logical:
        words = entry.split()
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.!+_-]+)$", words[0])
        if not match:
            raise BuildError("%s: %r is not an exact pin name==version" % (path, words[0]))
        hashes = set()
        for word in words[1:]:
            if not word.startswith("--hash=sha256:"):
                raise BuildError("%s: unexpected %r (only --hash=sha256:... allowed)" % (path, word))
            hashes.add(word[len("--hash=sha256:"):].lower())
        if not hashes:
            raise BuildError("%s: %s has no --hash=sha256: line" % (path, words[0]))
        requirements.append(Requirement(match.group(1), match.group(2), hashes))
    return requirements


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def find_wheel(requirement, wheels_dir):
    """The cached wheel of this requirement whose sha256 is pinned, or None."""
    if not os.path.isdir(wheels_dir):
        return None
    for name in sorted(os.listdir(wheels_dir)):
        if name.lower().startswith(requirement.wheel_prefix) and name.endswith(".whl"):
            path = os.path.join(wheels_dir, name)
            if sha256_file(path) in requirement.hashes:
                return path
    return None


def ensure_wheels(requirements, requirements_path, wheels_dir):
    """Paths of the pinned wheels, downloading with pip only what is missing."""
    missing = [r for r in requirements if find_wheel(r, wheels_dir) is None]
    if missing:
        os.makedirs(wheels_dir, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--require-hashes", "--no-deps", "--only-binary=:all:",
                   "--dest", wheels_dir, "-r", requirements_path]
        print("build_pyz: downloading %s" % ", ".join("%s==%s" % (r.name, r.version) for r in missing))
        try:
            subprocess.check_call(command)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise BuildError("pip download failed (%s); on a machine with network run `make wheels` and "
                             "copy %s here" % (exc, wheels_dir))
    paths = []
    for requirement in requirements:
        path = find_wheel(requirement, wheels_dir)
        if path is None:
            raise BuildError("no wheel of %s==%s with a pinned sha256 in %s"
                             % (requirement.name, requirement.version, wheels_dir))
        paths.append(path)
    return paths


def copy_package(source, staging):
    """pyslirp's modules: every ``*.py`` under pyslirp/, nothing else."""
    package = os.path.join(source, "pyslirp")
    if not os.path.isfile(os.path.join(package, "__init__.py")):
        raise BuildError("%s is not a pyslirp source tree" % source)
    for dirpath, dirnames, filenames in os.walk(package):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                src = os.path.join(dirpath, name)
                dest = os.path.join(staging, os.path.relpath(src, source))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copyfile(src, dest)


def extract_wheel(path, staging):
    """A wheel's importable contents and metadata (licences); never ``*.data/``."""
    with zipfile.ZipFile(path) as wheel:
        for info in wheel.infolist():
            name = info.filename
            parts = name.split("/")
            if info.is_dir() or ".." in parts or name.startswith("/") or "\\" in name:
                continue
            if parts[0].endswith(".data"):
                continue
            dest = os.path.join(staging, *parts)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with wheel.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)


def source_date_epoch(source):
    """SOURCE_DATE_EPOCH, else the date of the top entry of the Debian changelog."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value:
        return int(value)
    changelog = os.path.join(source, "packaging", "deb", "changelog")
    with open(changelog, encoding="utf-8") as f:
        for line in f:
            if line.startswith(" -- "):
                date = line.split(">", 1)[1].strip()
                return int(email.utils.mktime_tz(email.utils.parsedate_tz(date)))
    raise BuildError("no dated entry in %s" % changelog)


def write_zip(staging, zip_path, epoch):
    """A deterministic zip of the staging directory: sorted, one mtime, fixed modes."""
    date_time = time.gmtime(max(epoch, ZIP_EPOCH))[:6]
    members = []
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in filenames:
            path = os.path.join(dirpath, name)
            members.append((os.path.relpath(path, staging).replace(os.sep, "/"), path))
    members.sort()
    tmp = zip_path + ".tmp"
    with zipfile.ZipFile(tmp, "w") as archive:
        for arcname, path in members:
            info = zipfile.ZipInfo(arcname, date_time)
            # Stored, not deflated: zipimport needs the zlib module to inflate,
            # and minimal Python builds on embedded systems may lack it.
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o100644 << 16
            info.create_system = 3  # Unix, whatever the building machine
            with open(path, "rb") as f:
                archive.writestr(info, f.read())
    os.replace(tmp, zip_path)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Assemble the zip of the single-file pyslirp.")
    parser.add_argument("--source", default=SOURCE, help="pyslirp source tree (default: this checkout)")
    parser.add_argument("--requirements", default=os.path.join(HERE, "requirements.txt"))
    parser.add_argument("--wheels", default=os.path.join(SOURCE, "dist", "wheels"),
                        help="cache of the pinned wheels (filled by pip download when incomplete)")
    parser.add_argument("--build", default=os.path.join(SOURCE, "build", "pyz"), help="staging directory")
    parser.add_argument("--zip", default=os.path.join(SOURCE, "build", "pyslirp.zip"),
                        help="the zip to write (zipapp turns it into the .pyz)")
    parser.add_argument("--download-only", action="store_true", help="only fill the wheel cache")
    args = parser.parse_args(argv)
    try:
        requirements = parse_requirements(args.requirements)
        wheels = ensure_wheels(requirements, args.requirements, args.wheels)
        if args.download_only:
            for path in wheels:
                print(path)
            return 0
        if os.path.isdir(args.build):
            shutil.rmtree(args.build)
        os.makedirs(args.build)
        copy_package(args.source, args.build)
        for path in wheels:
            extract_wheel(path, args.build)
        shutil.copyfile(os.path.join(HERE, "__main__.py"), os.path.join(args.build, "__main__.py"))
        zip_dir = os.path.dirname(os.path.abspath(args.zip))
        os.makedirs(zip_dir, exist_ok=True)
        write_zip(args.build, args.zip, source_date_epoch(args.source))
    except BuildError as exc:
        sys.stderr.write("build_pyz: %s\n" % exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
