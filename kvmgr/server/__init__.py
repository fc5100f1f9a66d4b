"""The server: the store, its journals, and the manager server that serves it over a socket."""
