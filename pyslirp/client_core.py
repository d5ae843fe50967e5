"""The client role's sans-IO core: a PPP link in the client role and the client's IP stack.

Theory of operation: :class:`ClientCore` is :class:`~pyslirp.core.Core` with
the other end's parts: the :class:`~pyslirp.ppp.link.PPPLink` runs with
``role = "client"`` (it asks for an address, authenticates itself if the
server asks) and the stack is a :class:`~pyslirp.net.client_stack.ClientStack`
(flows we open, instead of flows the peer opens).  Everything else -- the
output budget in line bytes, compression rounds, timers, link events, the
service pass-throughs -- is the Core's, unchanged, so the runtime's stack
loop, serial reader and writer drive either.

At ``LinkUp`` the stack learns the addresses IPCP settled (and the session
MTU), and flows opened before it start.  ``LinkDown`` of any kind ends every
flow (the stack's ``suspend`` is a reset in the client role).  The runtime
opens flows with :meth:`open_flow` and reads their fate from
:meth:`take_events` (``FlowConnected``, ``FlowRefused``, ``FlowClosed`` and
the service events of the bytes, see :mod:`pyslirp.net.client_stack`).
``dns_servers`` lists what the server offered in IPCP (RFC 1877);
:meth:`resolve` looks a name up there (a ``Resolved`` event).
"""

import logging

from pyslirp.core import Core
from pyslirp.net.client_stack import ClientStack

log = logging.getLogger("pyslirp.core")


class ClientCore(Core):
    def __init__(self, link_config, stack_config, rng, tap=None, link=None, stack=None):
        if link_config.role != "client":
            raise ValueError("ClientCore needs a link configuration with role = \"client\"")
        if stack is None:
            stack = ClientStack(stack_config, rng)
        Core.__init__(self, link_config, stack_config, rng, tap=tap, link=link, stack=stack)
        self.local_ip = None
        self.remote_ip = None

    @property
    def dns_servers(self):
        return self.link.ipcp.dns_servers

    def open_flow(self, flow_id, host, port, now):
        """Open a TCP flow over the link to ``host``:``port`` (see ClientStack.open_flow)."""
        self._now = now
        self.stack.open_flow(flow_id, host, port, now)

    def resolve(self, query_id, name, now):
        """Look ``name`` up at the link's DNS server (ClientStack.resolve): a Resolved event follows."""
        self._now = now
        self.stack.resolve(query_id, name, now)

    def _link_up(self, event, now):
        Core._link_up(self, event, now)
        self.local_ip = event.local_ip
        self.remote_ip = event.remote_ip
        self.stack.set_dns(self.dns_servers)
        self.stack.set_addresses(event.local_ip, event.remote_ip, now)
