"""Module paths of the original Indexify SDK, kept for code written against it."""
