"""One builder per span type: `builder(ctx, typed, span)` fills `typed` from the span's chains (mapping/chains.py)."""
