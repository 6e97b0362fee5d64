"""Offline tooling around the Pulumi program: rendering, and the engine capture it rests on.

Every tool takes the project directory (the program and its stack files) as a parameter;
`CHECKOUT`, the project these tools belong to, is only the default.
"""

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
