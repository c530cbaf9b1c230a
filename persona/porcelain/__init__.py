"""One function per verb. Each returns plain dataclasses and never prints.

The CLI (persona.cli) parses arguments, calls these, and renders the results as
text or JSON. Tests call them directly.
"""
