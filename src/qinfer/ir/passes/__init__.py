"""Graph -> Graph passes, one per file. None mutates its input graph."""
