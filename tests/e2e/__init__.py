"""End-to-end test harness: the real Linux pppd in User-Mode Linux against pyslirp (see uml.py)."""
