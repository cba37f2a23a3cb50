"""Fuzzing: manifests, the small languages, CloudEvents and the HTTP API."""
