"""Stateless encoders and decoders for every header pyslirp speaks.

Modules here import only the standard library, hold no state and raise only
:class:`pyslirp.wire.errors.ParseError` on malformed input.
"""
