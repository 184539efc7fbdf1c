"""Switchyard's local inference engine (paged KV cache, continuous batching).

Not built yet: see the project's issue "Local inference engine". Nothing here
is imported by the gateway until then.
"""
