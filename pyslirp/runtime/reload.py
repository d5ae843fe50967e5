"""Reload on SIGHUP: re-read the configuration file, validate it, apply what can change without a new link.

Theory of operation
-------------------
The command line builds one :class:`Reloader` with what it needs to load the configuration exactly as at start-up
(the file given with ``-c``, the environment, the command line's own overrides, which keep overriding the file) and
the running configuration.  The stack thread calls it on SIGHUP (runtime/stackloop.py); it runs there, so nothing
it applies races with the protocol code.  In order:

1. load and validate the file.  A file that does not validate changes nothing: one log line names the key and the
   problem (``reload refused: services.2222.port: must be an integer between 1 and 65535, got 0; the running
   configuration stays``);
2. :func:`pyslirp.config.reload_changes` splits the differences into what is applied and what needs a new link
   (``[serial]``, ``[network]``, ``[ppp]``: the line, the addresses, the MTU, authentication); each of the latter
   is logged as needing a restart and keeps its running value;
3. everything that can still fail is prepared before anything is applied: the DNS upstream servers (a forwarder
   with no upstream refuses the reload, as it refuses to start), the audit file and the log file (a file that
   cannot be opened refuses the reload and the old one stays);
4. applied: the stack's configuration (``Runtime.reconfigure`` -> ``Core.reconfigure`` -> ``IPStack.reconfigure``:
   services added, removed or changed, limits, outbound policy, DNS forwarder, TCP tunables for new connections,
   breakers), the connectors' proxy and connect timeout, the connection log, the stats interval, logging, the
   audit log, and a new DNS relay when its servers or its way out changed.  Established flows carry on on the Route they were admitted
   with; a removed service refuses new connections.

The result is a :class:`ReloadResult` (ok, what changed, what needs a restart, the error) and one log line.
"""

import logging
from dataclasses import dataclass
from typing import Tuple

from pyslirp import config, logsetup
from pyslirp.config import ConfigError

log = logging.getLogger("pyslirp.runtime.reload")


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    changed: Tuple[str, ...] = ()       # what was applied (config.reload_changes' names)
    restart: Tuple[str, ...] = ()       # keys that changed but need a restart
    error: str = ""                     # why the file was refused (one line)


class Reloader(object):
    """``Reloader(load, cfg, dns, host_addresses, path)``; ``reloader(runtime, now) -> ReloadResult``.

    ``load()`` returns the validated Config as the command line builds it (ConfigError otherwise); ``cfg`` is the
    running one; ``dns(cfg)`` returns ``(servers, relay_factory or None)`` for the DNS forwarder (ValueError when
    the forwarder is on and no upstream can be found); ``host_addresses()`` this host's interface addresses.
    """

    def __init__(self, load, cfg, dns, host_addresses, path=""):
        self._load = load
        self.cfg = cfg
        self._dns = dns
        self._host_addresses = host_addresses
        self.path = path
        self._dns_key = None            # what the running DNS relay was built from

    def started(self, dns_servers):
        """The DNS servers the daemon started with (so that a reload that keeps them keeps the relay)."""
        self._dns_key = self._relay_key(self.cfg, dns_servers)

    @staticmethod
    def _relay_key(cfg, servers):
        if not cfg.dns.forwarder:
            return None
        proxy = cfg.proxy if cfg.outbound.via == "proxy" and cfg.proxy.type != "none" else None
        return tuple(tuple(s) for s in servers), proxy

    def _refuse(self, error):
        log.error("reload refused: %s; the running configuration stays", error)
        return ReloadResult(False, error=error)

    def __call__(self, runtime, now):
        try:
            new = self._load()
        except ConfigError as exc:
            return self._refuse(str(exc))
        effective, changed, restart = config.reload_changes(self.cfg, new)
        try:
            servers, relay_factory = self._dns(effective)
        except ValueError as exc:
            return self._refuse("dns.upstream: %s" % exc)
        lg, old_lg = effective.logging, self.cfg.logging
        audit = False                   # False: keep the running audit log
        if (lg.audit_file, lg.max_size, lg.rotate_count) != (old_lg.audit_file, old_lg.max_size, old_lg.rotate_count):
            audit = None
            if lg.audit_file:
                from pyslirp.runtime.audit import AuditLog
                try:
                    audit = AuditLog(lg.audit_file, lg.max_size, lg.rotate_count)
                except OSError as exc:
                    return self._refuse("logging.audit_file: cannot open %s: %s" % (lg.audit_file,
                                                                                   exc.strerror or exc))
        if (lg.level, lg.file, lg.max_size, lg.rotate_count) != (old_lg.level, old_lg.file, old_lg.max_size,
                                                                 old_lg.rotate_count):
            try:
                logsetup.setup(lg.level, lg.file, lg.max_size, lg.rotate_count)
            except OSError as exc:
                if audit:
                    audit.close()
                return self._refuse("logging.file: cannot open %s: %s" % (lg.file, exc.strerror or exc))
        for key in restart:
            log.warning("reload: %s changed; that needs a restart and is not applied", key)
        stack_config = config.stack_config(effective, host_addresses=self._host_addresses(),
                                           dns_upstream=servers)
        proxy = effective.proxy if effective.proxy.type != "none" else None
        runtime.reconfigure(now, stack_config, proxy=proxy, connect_timeout=effective.proxy.connect_timeout,
                            connection_log=effective.logging.connection_log,
                            stats_interval=effective.monitoring.stats_interval)
        if audit is not False:
            runtime.replace_audit(audit)
        key = self._relay_key(effective, servers)
        if key != self._dns_key:
            runtime.replace_dns_relay(relay_factory(runtime.post) if relay_factory is not None else None)
            self._dns_key = key
            if servers:
                log.info("DNS forwarder on %s:53 -> %s", effective.network.local_ip,
                         ", ".join("%s:%d" % tuple(hp) for hp in servers))
        self.cfg = effective
        log.info("configuration reloaded%s: %s", " from %s" % self.path if self.path else "",
                 ", ".join(changed) if changed else "no change")
        if [c for c in changed if c[1:].startswith("services.")]:
            log.info("services: %s", config.describe_services(effective.services))
        return ReloadResult(True, tuple(changed), tuple(restart))
