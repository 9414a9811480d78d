"""For people trying the janitor: the demo, a private Redis-protocol server, a progress bar."""
