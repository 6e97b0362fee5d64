"""The rehearsal: the real control plane with kwok nodes from a fleet file, the stack brought up on
it with the real engine, and a report of where the cache and its pods landed."""
