"""PID 1 of a User-Mode Linux guest that runs one end-to-end scenario.

Theory of operation
-------------------
The guest boots with the host's root filesystem (hostfs, read-write) and runs this file with the host's own Python
as its init, through a two-line shell wrapper written by ``tests/e2e/uml.py``.  Its only argument is the path of a
JSON plan in the run directory (a per-test temporary directory on the host, hence shared with the guest):

``modules``  absolute paths of kernel modules, already in load order (``modules.dep``), loaded with finit_module(2);
``etc_ppp``  ``{name: [text, mode]}`` files written into a private tmpfs mounted over ``/etc/ppp``;
``script``   a bash script (the test's guest-side commands), run with ``RESULTS`` = the run directory;
``timeout``  seconds the script may run before its whole process group is killed.

Isolation: the guest shares the host's files, so it mounts private tmpfs over ``/run`` and ``/etc/ppp`` (Debian's
``/etc/ppp/options`` says ``auth``, ``crtscts``, ``lock`` and its ip-up scripts would rewrite the host's
``/etc/resolv.conf``); ``/dev`` is the guest's own devtmpfs.  Everything the host wants back is written as files
into the run directory: ``guest.json`` (setup errors, the script's exit status), ``script.out`` and whatever the
script writes.  An init must never exit (the kernel panics), so whatever happens the guest ends with
``reboot(LINUX_REBOOT_CMD_POWER_OFF)``.
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import traceback

SYS_FINIT_MODULE = {"x86_64": 313, "i686": 350, "i386": 350, "aarch64": 273}
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8

libc = ctypes.CDLL(None, use_errno=True)
errors = []


def log(msg):
    sys.stderr.write("guest-init: %s\n" % msg)
    sys.stderr.flush()


def check(ok, what):
    if ok != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def mount(source, target, fstype, flags=0, data=None):
    if not os.path.isdir(target):
        os.makedirs(target)
    check(libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                     data.encode() if data else None), "mount %s on %s" % (fstype, target))


def is_mounted(target, fstype):
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1:3] == [target, fstype] for line in f)
    except OSError:
        return False


def load_module(path):
    nr = SYS_FINIT_MODULE[os.uname().machine]
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.syscall(ctypes.c_long(nr), ctypes.c_int(fd), b"", ctypes.c_int(0)) != 0:
            err = ctypes.get_errno()
            if err != 17:  # EEXIST: already loaded
                raise OSError(err, "finit_module %s: %s" % (path, os.strerror(err)))
    finally:
        os.close(fd)


def ensure_node(path, major, minor):
    if not os.path.exists(path):
        os.mknod(path, 0o600 | 0o020000, os.makedev(major, minor))


def setup(plan):
    # devtmpfs is mounted on /dev by the kernel (CONFIG_DEVTMPFS_MOUNT) on most configurations; not on all.
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if not is_mounted("/dev", "devtmpfs"):
        mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755")
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666")
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV)
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64m")
    os.makedirs("/run/lock", exist_ok=True)
    mount("tmpfs", "/etc/ppp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    for name, (text, mode) in sorted(plan.get("etc_ppp", {}).items()):
        path = os.path.join("/etc/ppp", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, int(mode))
    for path in plan.get("modules", []):
        load_module(path)
    ensure_node("/dev/ppp", 108, 0)
    ensure_node("/dev/ttyS0", 4, 64)
    subprocess.call(["ip", "link", "set", "lo", "up"])
    try:
        with open("/proc/sys/kernel/hostname", "w") as f:
            f.write("pppguest")
    except OSError:
        pass


def run_script(plan, results):
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root", "TERM": "dumb", "LANG": "C.UTF-8",
        "RESULTS": results, "PYTHON": sys.executable,
    }
    env.update(plan.get("env", {}))
    with open(os.path.join(results, "script.out"), "wb") as out:
        proc = subprocess.Popen(["/bin/bash", plan["script"]], cwd=results, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=float(plan.get("timeout", 60))), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(), True


def power_off():
    try:
        os.kill(-1, signal.SIGKILL)  # everything but init
    except OSError:
        pass
    os.sync()
    libc.reboot(ctypes.c_int(LINUX_REBOOT_CMD_POWER_OFF))
    while True:  # reboot(2) does not return on success; an init must never exit
        time.sleep(1)


def main():
    started = time.monotonic()
    plan_path = sys.argv[1]
    results = os.path.dirname(os.path.abspath(plan_path))
    report = {"script_rc": None, "timed_out": False, "setup_ok": False, "errors": errors}
    try:
        with open(plan_path) as f:
            plan = json.load(f)
        setup(plan)
        report["setup_ok"] = True
        report["setup_seconds"] = round(time.monotonic() - started, 3)
        rc, timed_out = run_script(plan, results)
        report["script_rc"] = rc
        report["timed_out"] = timed_out
    except Exception:  # the host reads this from guest.json; init must not die
        errors.append(traceback.format_exc())
        log(errors[-1])
    report["seconds"] = round(time.monotonic() - started, 3)
    try:
        tmp = os.path.join(results, "guest.json.tmp")
        with open(tmp, "w") as f:
            json.dump(report, f)
        os.rename(tmp, os.path.join(results, "guest.json"))
    except Exception:
        log(traceback.format_exc())
    power_off()


if __name__ == "__main__":
    try:
        main()
    finally:
        power_off()
