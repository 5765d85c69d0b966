"""The ``fedreid`` command (typer): it may import sims, server and clients; the library
(``fedreid/``) imports none of them."""
