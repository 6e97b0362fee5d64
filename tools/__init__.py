"""Offline tooling around the Pulumi program: rendering, and the engine capture it rests on."""
