"""The PPP link: the RFC 1661 automaton, LCP, IPCP, PAP/CHAP and the link phases.

Sans-IO: nothing here reads a clock or touches threads, sockets or files.
"""
