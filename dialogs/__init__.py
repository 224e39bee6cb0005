"""The conversation as a pure state machine: (state, event) -> (state, replies, effects).

Nothing here does I/O or imports a channel, HTTP or database library.
"""
