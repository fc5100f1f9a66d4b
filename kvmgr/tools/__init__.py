"""Tools built on the client: the CLI, actors, driver, scenarios, stress, faults, bench and launchers."""
