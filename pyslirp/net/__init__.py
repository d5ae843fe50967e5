"""The userspace IPv4 stack: IP input/output, ICMP, UDP and TCP.

Sans-IO: nothing here reads a clock or touches threads, sockets or files.
"""
