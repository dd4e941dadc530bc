"""Environment facts: the fingerprint, its diff, and torch's build and flags."""
