"""The protocol between clients and the server: the operation table (and, as the tree is layered, the codec)."""
