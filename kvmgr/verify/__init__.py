"""Verification: histories of calls and the linearizability checker."""
